/* Another agent's cgroup/connect4 program (a CNI's, say): connects to 10.97.0.1:80 go to
 * 10.244.1.11:8080. Used by t50_coexist to show both programs work on one cgroup. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("cgroup/connect4")
int foreign_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->user_ip4 == __builtin_bswap32(0x0a610001) &&
	    (__u16)ctx->user_port == __builtin_bswap16(80)) {
		ctx->user_ip4 = __builtin_bswap32(0x0af4010b);
		ctx->user_port = (__u32)__builtin_bswap16(8080);
	}
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
