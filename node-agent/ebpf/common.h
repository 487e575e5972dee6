/* Shared definitions of raftmesh's eBPF programs. The map keys and values, counter slots and
 * flags the agent shares are in abi.h (checked against node-agent/src/maps/abi.rs at build
 * time). */
#ifndef RAFTMESH_COMMON_H
#define RAFTMESH_COMMON_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"

static __always_inline void count(void *map, __u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(map, &slot);
	if (n)
		*n += 1;
}

#endif
