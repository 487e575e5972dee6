/* Another agent's tc program that accepts every packet (TC_ACT_OK ends the filter chain), as a
 * network policy agent that allows a flow would. Used by t70_tc_order at priority 1, handle 1:
 * the slot the AWS network policy agent and Cilium's legacy tc use. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("classifier")
int foreign_accept(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
