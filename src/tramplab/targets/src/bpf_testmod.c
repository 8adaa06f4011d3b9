// SPDX-License-Identifier: GPL-2.0
/*
 * The bpf_testmod functions the many-args, struct-arg and trampoline-count selftests attach
 * to (tools/testing/selftests/bpf/test_kmods/bpf_testmod.c), and callers standing in for
 * bpf_testmod_test_read(), which triggers them.
 */
#include "kernel.h"

struct bpf_testmod_struct_arg_2 {
	long a;
	long b;
};

long bpf_testmod_test_struct_arg_result;

int __traced bpf_testmod_test_struct_arg_1(struct bpf_testmod_struct_arg_2 a, int b, int c)
{
	bpf_testmod_test_struct_arg_result = a.a + a.b + b + c;
	return bpf_testmod_test_struct_arg_result;
}

int __traced bpf_testmod_fentry_test7(u64 a, void *b, short c, int d, void *e, char f, int g)
{
	return a + (long)b + c + d + (long)e + f + g;
}

int __traced bpf_testmod_fentry_test11(u64 a, void *b, short c, int d, void *e, char f, int g,
				       unsigned int h, long i, __u64 j, unsigned long k)
{
	return a + (long)b + c + d + (long)e + f + g + h + i + j + k;
}

int __traced bpf_testmod_trampoline_count_test(void)
{
	int ret = 0;

	barrier_var(ret);	/* keep clang from folding the call away in the caller */
	return ret;
}

/* fentry_many_args / fexit_many_args: 16..22 sum to 133, 16..26 to 231. */
int __traced tramplab_test_run_many_args(void)
{
	if (bpf_testmod_fentry_test7(16, (void *)17, 18, 19, (void *)20, 21, 22) != 133 ||
	    bpf_testmod_fentry_test11(16, (void *)17, 18, 19, (void *)20, 21, 22,
				      23, 24, 25, 26) != 231)
		return -EFAULT;
	return 0;
}

/* tracing_struct: struct_arg_1({2, 3}, 1, 4) == 10. */
int __traced tramplab_test_run_struct_arg(void)
{
	struct bpf_testmod_struct_arg_2 struct_arg2 = {2, 3};

	if (bpf_testmod_test_struct_arg_1(struct_arg2, 1, 4) != 10)
		return -EFAULT;
	return 0;
}

/*
 * trampoline_count: trigger the target.  0 when it returned 0 (untraced, or an fmod_ret prog
 * returned 0 and the original ran), else -EFAULT.
 */
int __traced tramplab_test_run_trampoline_count(void)
{
	if (bpf_testmod_trampoline_count_test() != 0)
		return -EFAULT;
	return 0;
}
