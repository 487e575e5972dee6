/* Identity policy for traffic to pods, on tcx of the host side of each pod's veth.
 *
 * pol_to_pod (tcx egress of the host-side veth: packets going into the pod): the destination
 * IP is looked up in the ipcache; if its identity is selected by a policy (pol_enforced), a new
 * flow is allowed only when pol_rules holds (endpoint identity, source identity, port,
 * protocol), with 0 as "any port" / "any protocol". The source identity comes from the same
 * LPM-trie ipcache (pod IPs of every cluster, node IPs as their cluster's host / remote-node).
 * A new TCP flow is a SYN without ACK; later TCP segments pass (they belong to a connection the
 * policy admitted, or the endpoint answers them with a reset). UDP and ICMP echo have no
 * handshake: replies to flows the endpoint started pass because pol_from_pod records those
 * flows. ICMP errors (unreachable, time exceeded, parameter problem) pass: path MTU discovery
 * needs them. Later fragments pass (the first one decided), except TCP fragments overlapping
 * the header; an IPv4 packet whose transport header cannot be read is dropped.
 *
 * pol_from_pod (tcx ingress of the same veth: packets leaving the pod) records the UDP and
 * ICMP echo flows an enforced endpoint starts, in pol_pod_flows: FLOW_SLOTS slots per pod
 * interface, keyed by the interface and the flow's hash, so one pod can fill or flush only its
 * own slots, and a reply is looked up in the slots of the interface it is delivered to — a pod
 * that forges another pod's address records nothing for that pod. A flow seen longer than
 * FLOW_TIMEOUT ago passes no reply. Where the agent knows the pod's address (a /32 route to
 * the interface: Cilium, the VPC CNI, Calico), packets from any other source are dropped.
 *
 * pol_ifaces (written by the agent for every interface it attaches to) says what is behind
 * each interface: the pod's identity (from the agent, or learned from the IPv4 packets
 * delivered to it), its address and whether a pod whose identity is not known yet is
 * default-denied (--enforce-unknown-pods): such a pod takes only this node's host (kubelet
 * probes) and replies to what it started, until its address reaches the ipcache. IPv6 —
 * which no rule can name — to a pod that is enforced (or awaiting its identity) is dropped,
 * decided by the interface it arrives on.
 *
 * Every decision on a new flow is also counted by (endpoint, source identity, verdict) in
 * pol_verdicts, so an operator (and the tests) can see which identity a packet was judged as:
 * a pod, another cluster's remote-node (traffic that was masqueraded on its way), or none.
 *
 * On kernels without tcx the same programs run as direct-action tc filters: TCX_NEXT and
 * TC_ACT_UNSPEC are both -1 ("continue with the next program or filter").
 *
 * Both return TCX_NEXT when they do not drop, so a CNI's programs on the same hook still run. */
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include "common.h"

#ifndef TCX_NEXT
#define TCX_NEXT -1
#endif
#define BE16(x) __builtin_bswap16(x)
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

/* The start of an ICMP echo header (linux/icmp.h pulls in libc headers). */
struct icmp_echo {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 sequence;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1048576);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} pol_enforced SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1048576);
	__type(key, struct policy_key);
	__type(value, __u32);
} pol_rules SEC(".maps");

/* Flow slots per pod interface, and how long a flow's replies pass after its last packet
 * (nf_conntrack's UDP stream timeout). */
#define FLOW_SLOTS 1024
#define FLOW_TIMEOUT_NS (120ULL * 1000000000ULL)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144); /* 256 pods' worth of slots */
	__type(key, struct pod_flow_key);
	__type(value, struct pod_flow_value);
} pol_pod_flows SEC(".maps");

/* What is behind a pod interface (key: its ifindex; struct iface_value in abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct iface_value);
} pol_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct verdict_key);
	__type(value, __u64);
} pol_verdicts SEC(".maps");

/* The policy counters (enum pol_counter). Named pol_stats since they grew from 4 slots: a
 * pinned map keeps the size it was made with. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, POL_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} pol_stats SEC(".maps");

struct packet {
	__u32 saddr, daddr;
	__u16 sport, dport; /* host order; ICMP echo: the id in both */
	__u8 proto;
	__u8 tcp_syn_only;
	__u8 icmp_type;
	__u8 later_fragment; /* not the first fragment: no L4 header */
	__u16 frag_offset;   /* in 8-byte units */
};

#define NOT_IPV4 -1
#define MALFORMED -2

/* 0: parsed an IPv4 packet; NOT_IPV4: not ours to judge; MALFORMED: IPv4 whose transport
 * header cannot be read (a truncated first fragment, say) — dropped when it goes to an
 * enforced endpoint, never judged as "established". */
static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	if (skb->protocol != BE16(ETH_P_IP))
		return NOT_IPV4;
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return NOT_IPV4;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->proto = ip.protocol;
	p->sport = p->dport = 0;
	p->tcp_syn_only = 0;
	p->icmp_type = 0;
	p->frag_offset = BE16(ip.frag_off) & 0x1fff;
	p->later_fragment = p->frag_offset != 0;
	if (p->later_fragment)
		return 0;
	__u32 l4 = ETH_HLEN + ip.ihl * 4;
	if (ip.protocol == IPPROTO_TCP) {
		struct tcphdr th;
		if (bpf_skb_load_bytes(skb, l4, &th, sizeof(th)) < 0)
			return MALFORMED;
		p->sport = BE16(th.source);
		p->dport = BE16(th.dest);
		p->tcp_syn_only = th.syn && !th.ack;
	} else if (ip.protocol == IPPROTO_UDP || ip.protocol == IPPROTO_SCTP) {
		/* Both start with the source and destination ports. */
		struct udphdr uh;
		if (bpf_skb_load_bytes(skb, l4, &uh, sizeof(uh)) < 0)
			return MALFORMED;
		p->sport = BE16(uh.source);
		p->dport = BE16(uh.dest);
	} else if (ip.protocol == IPPROTO_ICMP) {
		struct icmp_echo ih;
		if (bpf_skb_load_bytes(skb, l4, &ih, sizeof(ih)) < 0)
			return MALFORMED;
		p->icmp_type = ih.type;
		if (ih.type == ICMP_ECHO || ih.type == ICMP_ECHOREPLY)
			p->sport = p->dport = BE16(ih.id);
	}
	return 0;
}

/* A flow as pol_from_pod records it and pol_to_pod looks for its replies: the pod's side
 * first; ICMP echo keys on the id alone. */
static __always_inline struct flow_key flow_of(__u32 pod_ip, __u16 pod_port, __u32 peer_ip,
					       __u16 peer_port, __u8 proto)
{
	struct flow_key flow = {
		.pod_ip = pod_ip,
		.peer_ip = peer_ip,
		.pod_port = pod_port,
		.peer_port = proto == IPPROTO_ICMP ? 0 : peer_port,
		.proto = proto,
	};
	return flow;
}

/* The slot of `flow` among its pod's FLOW_SLOTS. */
static __always_inline struct pod_flow_key slot_of(__u32 ifindex, const struct flow_key *flow)
{
	__u32 h = flow->peer_ip ^ ((__u32)flow->peer_port << 16 | flow->pod_port) ^
		  ((__u32)flow->proto << 24);
	h *= 0x9e3779b1;
	struct pod_flow_key key = { .ifindex = ifindex, .slot = (h >> 22) & (FLOW_SLOTS - 1) };
	return key;
}

static __always_inline int same_flow(const struct flow_key *a, const struct flow_key *b)
{
	return a->pod_ip == b->pod_ip && a->peer_ip == b->peer_ip && a->pod_port == b->pod_port &&
	       a->peer_port == b->peer_port && a->proto == b->proto;
}

/* Whether the pod behind `pod` is guarded: enforced, or of unknown identity and default-denied. */
static __always_inline int guarded(const struct iface_value *pod)
{
	if (pod->identity == 0)
		return pod->flags & IFACE_DENY_UNKNOWN;
	__u32 id = pod->identity;
	return bpf_map_lookup_elem(&pol_enforced, &id) != 0;
}

/* Unicast IPv4 (not multicast, not the limited broadcast). */
static __always_inline int unicast(__u32 ip)
{
	__u8 first = ip & 0xff; /* network order: the first octet is the low byte */
	return first < 224;
}

static __always_inline struct ipcache_value *identity_of(__u32 ip)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = ip };
	return bpf_map_lookup_elem(&ipcache, &key);
}

static __always_inline void record(__u32 endpoint, __u32 peer, __u32 verdict)
{
	struct verdict_key key = { .endpoint = endpoint, .peer = peer, .verdict = verdict };
	__u64 *n = bpf_map_lookup_elem(&pol_verdicts, &key);
	if (n) {
		*n += 1; /* per CPU: no other writer */
	} else {
		__u64 one = 1;
		bpf_map_update_elem(&pol_verdicts, &key, &one, BPF_NOEXIST);
	}
}

static __always_inline int allowed(__u32 endpoint, __u32 peer, __u16 port, __u8 proto)
{
	struct policy_key key = { .endpoint = endpoint, .peer = peer, .port = port, .proto = proto };
	if (bpf_map_lookup_elem(&pol_rules, &key))
		return 1;
	key.proto = 0;
	if (bpf_map_lookup_elem(&pol_rules, &key))
		return 1;
	key.port = 0;
	key.proto = proto;
	if (bpf_map_lookup_elem(&pol_rules, &key))
		return 1;
	key.proto = 0;
	return bpf_map_lookup_elem(&pol_rules, &key) != 0;
}

SEC("classifier")
int pol_to_pod(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct iface_value *pod = bpf_map_lookup_elem(&pol_ifaces, &ifindex);
	struct packet p;
	int parsed = parse(skb, &p);
	if (parsed == NOT_IPV4) {
		if (skb->protocol == BE16(ETH_P_IPV6) && pod && guarded(pod)) {
			count(&pol_stats, POL_IPV6_DENIED);
			return TC_ACT_SHOT;
		}
		return TCX_NEXT;
	}
	struct ipcache_value *dst = identity_of(p.daddr);
	__u32 endpoint = 0;
	int awaiting = 0;
	if (dst) {
		endpoint = dst->identity;
		/* What lives behind this interface, learned from what is delivered to it. */
		if (pod && (dst->flags & IPCACHE_POD) && pod->identity != endpoint &&
		    unicast(p.daddr))
			pod->identity = endpoint;
		if (!bpf_map_lookup_elem(&pol_enforced, &endpoint))
			return TCX_NEXT; /* no policy selects it: allowed, as in Kubernetes */
	} else if (pod && (pod->flags & IFACE_DENY_UNKNOWN) && unicast(p.daddr)) {
		awaiting = 1; /* a pod whose identity is not known yet */
	} else {
		return TCX_NEXT;
	}
	if (parsed == MALFORMED) {
		count(&pol_stats, POL_DENIED);
		return TC_ACT_SHOT;
	}
	if (p.later_fragment) {
		/* The first fragment carried the decision: without it nothing reassembles. A
		 * TCP fragment overlapping the header (RFC 1858) could rewrite the flags the
		 * decision was made on: dropped. */
		if (p.proto == IPPROTO_TCP && p.frag_offset < 3) {
			count(&pol_stats, POL_DENIED);
			return TC_ACT_SHOT;
		}
		return TCX_NEXT;
	}
	if (p.proto == IPPROTO_TCP && !p.tcp_syn_only)
		return TCX_NEXT;
	if (p.proto == IPPROTO_ICMP &&
	    (p.icmp_type == ICMP_DEST_UNREACH || p.icmp_type == ICMP_TIME_EXCEEDED ||
	     p.icmp_type == ICMP_PARAMETERPROB)) {
		/* Errors about the endpoint's own traffic (path MTU discovery needs them). */
		count(&pol_stats, POL_REPLY);
		return TCX_NEXT;
	}
	if (p.proto == IPPROTO_UDP || (p.proto == IPPROTO_ICMP && p.icmp_type == ICMP_ECHOREPLY)) {
		struct flow_key flow = flow_of(p.daddr, p.dport, p.saddr, p.sport, p.proto);
		struct pod_flow_key slot = slot_of(ifindex, &flow);
		struct pod_flow_value *seen = bpf_map_lookup_elem(&pol_pod_flows, &slot);
		if (seen && same_flow(&seen->flow, &flow) &&
		    bpf_ktime_get_ns() - seen->seen < FLOW_TIMEOUT_NS) {
			count(&pol_stats, POL_REPLY);
			return TCX_NEXT;
		}
	}
	struct ipcache_value *src = identity_of(p.saddr);
	if (!src) {
		count(&pol_stats, POL_UNKNOWN_IDENTITY);
		record(endpoint, 0, VERDICT_UNKNOWN);
		return TC_ACT_SHOT;
	}
	if (awaiting) {
		/* This node's host only (kubelet probes), until the pod's identity is known. */
		if (src->identity == pod->host) {
			count(&pol_stats, POL_ALLOWED);
			return TCX_NEXT;
		}
		count(&pol_stats, POL_AWAITING);
		record(0, src->identity, VERDICT_DENIED);
		return TC_ACT_SHOT;
	}
	__u16 port = p.proto == IPPROTO_ICMP ? 0 : p.dport;
	if (!allowed(endpoint, src->identity, port, p.proto)) {
		count(&pol_stats, POL_DENIED);
		record(endpoint, src->identity, VERDICT_DENIED);
		return TC_ACT_SHOT;
	}
	count(&pol_stats, POL_ALLOWED);
	record(endpoint, src->identity, VERDICT_ALLOWED);
	return TCX_NEXT;
}

SEC("classifier")
int pol_from_pod(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct iface_value *pod = bpf_map_lookup_elem(&pol_ifaces, &ifindex);
	struct packet p;
	int parsed = parse(skb, &p);
	if (parsed == NOT_IPV4)
		return TCX_NEXT;
	if (pod && pod->pod_ip && p.saddr != pod->pod_ip) {
		count(&pol_stats, POL_SPOOFED);
		return TC_ACT_SHOT;
	}
	if (parsed != 0 || !pod || p.later_fragment)
		return TCX_NEXT;
	/* Only UDP and ICMP echo need their replies let in: TCP is judged on the SYN. */
	if (!(p.proto == IPPROTO_UDP || (p.proto == IPPROTO_ICMP && p.icmp_type == ICMP_ECHO)))
		return TCX_NEXT;
	struct ipcache_value *src = identity_of(p.saddr);
	if (src) {
		__u32 endpoint = src->identity;
		if (!bpf_map_lookup_elem(&pol_enforced, &endpoint))
			return TCX_NEXT;
	} else if (!(pod->flags & IFACE_DENY_UNKNOWN)) {
		return TCX_NEXT;
	}
	struct pod_flow_value seen = {
		.flow = flow_of(p.saddr, p.sport, p.daddr, p.dport, p.proto),
		.seen = bpf_ktime_get_ns(),
	};
	struct pod_flow_key slot = slot_of(ifindex, &seen.flow);
	bpf_map_update_elem(&pol_pod_flows, &slot, &seen, BPF_ANY);
	return TCX_NEXT;
}

char LICENSE[] SEC("license") = "GPL";
