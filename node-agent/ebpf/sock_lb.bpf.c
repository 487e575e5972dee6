/* Socket load balancing for global services (cgroup/connect4, sendmsg4, recvmsg4,
 * getpeername4).
 *
 * A connect() or sendmsg() to a service VIP:port is rewritten to one backend taken at random
 * from the service's slots, so the packet never carries the VIP and no per-packet NAT is
 * needed. The agent programs only the backends that should receive new connections (it
 * applies readiness, affinity, terminating and stale-remote rules), so this program only
 * picks a slot. The backend a socket was sent to is remembered by socket cookie, so a UDP
 * reply (recvmsg) and getpeername() show the VIP the application asked for.
 *
 * Maps are pinned and adopted across agent restarts; their keys and values are in abi.h; see
 * node-agent/src/maps.rs for the update order that keeps a concurrent connect safe. */
#include "common.h"

#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1048576);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
} lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct revnat_key);
	__type(value, struct revnat_value);
} lb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} lb_counters SEC(".maps");

/* 1: keep going (maybe rewritten); 0: refuse (the syscall fails with EPERM at once). */
static __always_inline int balance(struct bpf_sock_addr *ctx)
{
	struct svc_key key = {
		.vip = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
		.proto = (__u8)ctx->protocol,
	};
	if (key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP)
		return 1;
	struct svc_value *svc = bpf_map_lookup_elem(&lb_services, &key);
	if (!svc)
		return 1; /* not a global service: the CNI's */
	__u32 n = svc->count;
	if (n == 0) {
		count(&lb_counters, LB_NO_BACKEND);
		return 0;
	}
	struct backend_key bkey = { .svc = key, .slot = bpf_get_prandom_u32() % n };
	struct backend_value *be = bpf_map_lookup_elem(&lb_backends, &bkey);
	if (!be) {
		/* The service shrank between the two lookups: slot 0 is written before and
		 * removed after every other slot. */
		count(&lb_counters, LB_SLOT_MISSING);
		bkey.slot = 0;
		be = bpf_map_lookup_elem(&lb_backends, &bkey);
		if (!be) {
			count(&lb_counters, LB_NO_BACKEND);
			return 0;
		}
	}
	struct revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.ip = be->ip,
		.port = be->port,
	};
	struct revnat_value rval = { .vip = key.vip, .port = key.port };
	bpf_map_update_elem(&lb_revnat, &rkey, &rval, BPF_ANY);
	ctx->user_ip4 = be->ip;
	ctx->user_port = (__u32)be->port; /* a full 4-byte store; the port is in the low 16 bits */
	count(&lb_counters, LB_REDIRECTED);
	return 1;
}

/* Shows the VIP instead of the backend a socket was balanced to. */
static __always_inline int reverse(struct bpf_sock_addr *ctx)
{
	struct revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.ip = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
	};
	struct revnat_value *v = bpf_map_lookup_elem(&lb_revnat, &rkey);
	if (v) {
		ctx->user_ip4 = v->vip;
		ctx->user_port = (__u32)v->port;
		count(&lb_counters, LB_REVERSED);
	}
	return 1;
}

SEC("cgroup/connect4")
int lb_connect4(struct bpf_sock_addr *ctx)
{
	return balance(ctx);
}

SEC("cgroup/sendmsg4")
int lb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return balance(ctx);
}

SEC("cgroup/recvmsg4")
int lb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return reverse(ctx);
}

SEC("cgroup/getpeername4")
int lb_getpeername4(struct bpf_sock_addr *ctx)
{
	return reverse(ctx);
}

char LICENSE[] SEC("license") = "GPL";
