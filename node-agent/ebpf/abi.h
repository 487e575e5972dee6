/* The eBPF ABI: every key and value of a map the agent reads, writes or adopts (all maps are
 * pinned), and the numbers both sides share (counter slots, flags, verdicts). Only plain
 * <linux/types.h> here: node-agent/build.rs also compiles this header for the host, prints
 * every struct's size and every field's offset and size into $OUT_DIR/abi_c.rs, and
 * node-agent/src/maps/abi.rs checks its Rust mirror (the offsets the encoders in maps.rs
 * write at) against those at compile time — a field changed here and not there fails the
 * build, naming the struct and field.
 *
 * For build.rs to read it: one field per line (`type name;` or `type name[n];`), a comment
 * inside a struct only on one line, no nested definitions. A changed layout needs new map names
 * too: pinned maps of the old layout are adopted by name on restart. */
#ifndef RAFTMESH_ABI_H
#define RAFTMESH_ABI_H

#include <linux/types.h>

/* Counter slots, in lb_counters and pol_stats (per-CPU arrays of u64); the names are
 * LB_COUNTER_NAMES and POL_COUNTER_NAMES in maps.rs. */
enum lb_counter {
	LB_REDIRECTED = 0,   /* connect/sendmsg to a VIP rewritten to a backend */
	LB_NO_BACKEND = 1,   /* connect/sendmsg to a VIP with no usable backend: refused */
	LB_SLOT_MISSING = 2, /* a slot vanished under a concurrent update: slot 0 used */
	LB_REVERSED = 3,     /* recvmsg/getpeername shown the VIP instead of the backend */
	LB_COUNTERS = 4,
};

enum pol_counter {
	POL_ALLOWED = 0,          /* new flow to an enforced endpoint, allowed by a rule */
	POL_DENIED = 1,           /* dropped: no rule allows the source identity */
	POL_UNKNOWN_IDENTITY = 2, /* dropped: the source IP has no identity */
	POL_REPLY = 3,            /* passed: reply to a flow the endpoint started */
	POL_IPV6_DENIED = 4,      /* dropped: IPv6 to an enforced (or awaiting) pod */
	POL_SPOOFED = 5,          /* dropped: a pod sent from an address not its own */
	POL_AWAITING = 6,         /* dropped: to a pod whose identity is not known yet */
	POL_COUNTERS = 7,
};

/* ---- Socket load balancing (sock_lb.bpf.c) ---- */

/* lb_services key, and the first field of lb_backends' key: a frontend. */
struct svc_key {
	__u32 vip;   /* network order */
	__u16 port;  /* network order */
	__u8 proto;
	__u8 pad;
};

/* lb_services value. */
struct svc_value {
	__u32 count; /* backend slots 0..count; 0 = no usable backend: refuse */
	__u32 flags;
};

/* lb_backends key. */
struct backend_key {
	struct svc_key svc;
	__u32 slot;
};

/* lb_backends value. */
struct backend_value {
	__u32 ip;         /* network order */
	__u16 port;       /* network order */
	__u16 cluster_id;
	__u32 flags;      /* for people: see backend_flags in maps.rs */
};

/* lb_revnat key (written by the program only; adopted with its pin). */
struct revnat_key {
	__u64 cookie;
	__u32 ip;
	__u16 port;
	__u16 pad;
};

/* lb_revnat value. */
struct revnat_value {
	__u32 vip;
	__u16 port;
	__u16 pad;
};

/* ---- Identity policy (policy.bpf.c) ---- */

/* ipcache key (an LPM trie key: aya's LpmKey<[u8; 4]>). */
struct ipcache_key {
	__u32 prefixlen;
	__u32 ip;        /* network order */
};

/* ipcache value. */
struct ipcache_value {
	__u32 identity;
	__u16 cluster_id;
	__u16 flags;      /* IPCACHE_*, ipcache_flags in maps.rs */
};

/* ipcache_value flags the program reads. */
#define IPCACHE_POD 1

/* pol_rules key (value: a __u32, 1). */
struct policy_key {
	__u32 endpoint;
	__u32 peer;
	__u16 port;     /* host order; 0 = any */
	__u8 proto;     /* 0 = any */
	__u8 pad;
};

/* A flow an enforced pod started: the first field of pol_pod_flows' value. */
struct flow_key {
	__u32 pod_ip;
	__u32 peer_ip;
	__u16 pod_port;
	__u16 peer_port;
	__u8 proto;
	__u8 pad[3];
};

/* pol_pod_flows key: a pod interface's slot. */
struct pod_flow_key {
	__u32 ifindex;
	__u32 slot;
};

/* pol_pod_flows value. */
struct pod_flow_value {
	struct flow_key flow;
	__u64 seen;           /* bpf_ktime_get_ns of its last packet from the pod */
};

/* pol_ifaces value (key: the interface's ifindex, a __u32): what is behind a pod interface. */
struct iface_value {
	__u32 identity; /* the pod's, 0 while unknown */
	__u32 flags;    /* IFACE_* */
	__u32 pod_ip;   /* network order; 0 when the agent does not know it */
	__u32 host;     /* this node's host identity */
};

/* iface_value flags. */
#define IFACE_DENY_UNKNOWN 1 /* --enforce-unknown-pods */

/* pol_verdicts key (value: a per-CPU __u64 of new flows). */
struct verdict_key {
	__u32 endpoint;
	__u32 peer;
	__u32 verdict;  /* VERDICT_* */
};

/* The verdicts of pol_verdicts, by number (VERDICT_NAMES in maps.rs). */
#define VERDICT_ALLOWED 0
#define VERDICT_DENIED 1
#define VERDICT_UNKNOWN 2 /* the source has no identity (peer 0) */

#endif
