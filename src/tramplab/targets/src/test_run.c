// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel-side targets of the BPF tracing selftests, written after net/bpf/test_run.c:
 * bpf_fentry_test1..10, the two fmod_ret targets and the "test_run" callers that call them with
 * the values the selftests check.  The callers return what bpf_prog_test_run_tracing() would
 * put in err (0 or -EFAULT) and retval.
 */
#include "kernel.h"

struct bpf_fentry_test_t {
	struct bpf_fentry_test_t *a;
};

int __traced bpf_fentry_test1(int a)
{
	return a + 1;
}

int __traced bpf_fentry_test2(int a, u64 b)
{
	return a + b;
}

int __traced bpf_fentry_test3(char a, int b, u64 c)
{
	return a + b + c;
}

int __traced bpf_fentry_test4(void *a, char b, int c, u64 d)
{
	return (long)a + b + c + d;
}

int __traced bpf_fentry_test5(u64 a, void *b, short c, int d, u64 e)
{
	return a + (long)b + c + d + e;
}

int __traced bpf_fentry_test6(u64 a, void *b, short c, int d, void *e, u64 f)
{
	return a + (long)b + c + d + (long)e + f;
}

int __traced bpf_fentry_test7(struct bpf_fentry_test_t *arg)
{
	barrier_var(arg);
	return (long)arg;
}

int __traced bpf_fentry_test8(struct bpf_fentry_test_t *arg)
{
	return (long)arg->a;
}

u32 __traced bpf_fentry_test9(u32 *a)
{
	return *a;
}

int __traced bpf_fentry_test10(const void *a)
{
	barrier_var(a);
	return (long)a;
}

int __traced bpf_modify_return_test(int a, int *b)
{
	*b += 1;
	return a + *b;
}

int __traced bpf_modify_return_test2(int a, int *b, short c, int d, void *e, char f, int g)
{
	*b += 1;
	return a + *b + c + d + (long)e + f + g;
}

/* A traced function that calls another one and does work after it returns (no tail call). */
int __traced tramplab_calls_test1(int a)
{
	return 2 * bpf_fentry_test1(a);
}

/* bpf_prog_test_run_tracing(), BPF_TRACE_FENTRY/FEXIT: 0, or -EFAULT if any result is off. */
int __traced tramplab_test_run_tracing(void)
{
	struct bpf_fentry_test_t arg = {};
	u32 retval = 0;

	if (bpf_fentry_test1(1) != 2 ||
	    bpf_fentry_test2(2, 3) != 5 ||
	    bpf_fentry_test3(4, 5, 6) != 15 ||
	    bpf_fentry_test4((void *)7, 8, 9, 10) != 34 ||
	    bpf_fentry_test5(11, (void *)12, 13, 14, 15) != 65 ||
	    bpf_fentry_test6(16, (void *)17, 18, 19, (void *)20, 21) != 111 ||
	    bpf_fentry_test7((struct bpf_fentry_test_t *)0) != 0 ||
	    bpf_fentry_test8(&arg) != 0 ||
	    bpf_fentry_test9(&retval) != 0 ||
	    bpf_fentry_test10((void *)0) != 0)
		return -EFAULT;
	return 0;
}

/*
 * bpf_prog_test_run_tracing(), BPF_MODIFY_RETURN: the retval the selftest reads,
 * side_effect << 16 | (u16)ret.  Untraced: side_effect 2, ret 4 + 29 = 33 -> 0x20021.
 */
u32 __traced tramplab_test_run_modify_return(void)
{
	u16 side_effect = 0, ret = 0;
	int b = 2;

	ret = bpf_modify_return_test(1, &b);
	if (b != 2)
		side_effect++;
	b = 2;
	ret += bpf_modify_return_test2(1, &b, 3, 4, (void *)5, 6, 7);
	if (b != 2)
		side_effect++;
	return ((u32)side_effect << 16) | ret;
}
