/* Shared definitions of raftmesh's eBPF programs. The layouts of map keys and values are an
 * ABI with node-agent/src/maps.rs: change both together, and a changed layout needs new map
 * names (pinned maps of the old layout are adopted by name on restart). */
#ifndef RAFTMESH_COMMON_H
#define RAFTMESH_COMMON_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* Counter slots, in lb_counters and pol_counters (per-CPU arrays of u64). */
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

static __always_inline void count(void *map, __u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(map, &slot);
	if (n)
		*n += 1;
}

#endif
