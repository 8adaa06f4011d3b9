// SPDX-License-Identifier: GPL-2.0
/*
 * The rest of bpf_testmod's struct-argument functions (tools/testing/selftests/bpf/
 * bpf_testmod/bpf_testmod.c of 6.12: bpf_testmod_test_struct_arg_2..9), which
 * prog_tests/tracing_struct.c's programs trace, and a caller standing in for the part of
 * bpf_testmod_test_read() that calls them.  Included last in targets.c so that every function
 * before it keeps its address; struct bpf_testmod_struct_arg_2 and the result variable come
 * from bpf_testmod.c.
 */

struct bpf_testmod_struct_arg_1 {
	int a;
};

struct bpf_testmod_struct_arg_3 {
	int a;
	int b[];
};

struct bpf_testmod_struct_arg_4 {
	u64 a;
	int b;
};

struct bpf_testmod_struct_arg_5 {
	char a;
	short b;
	int c;
	long d;
};

int __traced bpf_testmod_test_struct_arg_2(int a, struct bpf_testmod_struct_arg_2 b, int c)
{
	bpf_testmod_test_struct_arg_result = a + b.a + b.b + c;
	return bpf_testmod_test_struct_arg_result;
}

int __traced bpf_testmod_test_struct_arg_3(int a, int b, struct bpf_testmod_struct_arg_2 c)
{
	bpf_testmod_test_struct_arg_result = a + b + c.a + c.b;
	return bpf_testmod_test_struct_arg_result;
}

int __traced bpf_testmod_test_struct_arg_4(struct bpf_testmod_struct_arg_1 a, int b, int c, int d,
					   struct bpf_testmod_struct_arg_2 e)
{
	bpf_testmod_test_struct_arg_result = a.a + b + c + d + e.a + e.b;
	return bpf_testmod_test_struct_arg_result;
}

int __traced bpf_testmod_test_struct_arg_5(void)
{
	bpf_testmod_test_struct_arg_result = 1;
	return bpf_testmod_test_struct_arg_result;
}

int __traced bpf_testmod_test_struct_arg_6(struct bpf_testmod_struct_arg_3 *a)
{
	bpf_testmod_test_struct_arg_result = a->b[0];
	return bpf_testmod_test_struct_arg_result;
}

int __traced bpf_testmod_test_struct_arg_7(u64 a, void *b, short c, int d, void *e,
					   struct bpf_testmod_struct_arg_4 f)
{
	bpf_testmod_test_struct_arg_result = a + (long)b + c + d + (long)e + f.a + f.b;
	return bpf_testmod_test_struct_arg_result;
}

int __traced bpf_testmod_test_struct_arg_8(u64 a, void *b, short c, int d, void *e,
					   struct bpf_testmod_struct_arg_4 f, int g)
{
	bpf_testmod_test_struct_arg_result = a + (long)b + c + d + (long)e + f.a + f.b + g;
	return bpf_testmod_test_struct_arg_result;
}

int __traced bpf_testmod_test_struct_arg_9(u64 a, void *b, short c, int d, void *e, char f,
					   short g, struct bpf_testmod_struct_arg_5 h, long i)
{
	bpf_testmod_test_struct_arg_result = a + (long)b + c + d + (long)e + f + g + h.a + h.b +
					     h.c + h.d + i;
	return bpf_testmod_test_struct_arg_result;
}

/*
 * tracing_struct (both subtests): bpf_testmod_test_read()'s calls, in its order, with its
 * values.  The kernel kmallocs struct_arg3 (an int and one element of b[]); here it lives on
 * the stack.  0 when every call returned what the untraced function computes, else -EFAULT.
 */
int __traced tramplab_test_run_struct_args(void)
{
	struct bpf_testmod_struct_arg_1 struct_arg1 = {10};
	struct bpf_testmod_struct_arg_2 struct_arg2 = {2, 3};
	struct bpf_testmod_struct_arg_4 struct_arg4 = {21, 22};
	struct bpf_testmod_struct_arg_5 struct_arg5 = {23, 24, 25, 26};
	union {
		struct bpf_testmod_struct_arg_3 s;
		int words[2];
	} struct_arg3 = {.words = {0, 1}};		/* a = 0, b[0] = 1 */
	int bad = 0;

	bad |= bpf_testmod_test_struct_arg_1(struct_arg2, 1, 4) != 10;
	bad |= bpf_testmod_test_struct_arg_2(1, struct_arg2, 4) != 10;
	bad |= bpf_testmod_test_struct_arg_3(1, 4, struct_arg2) != 10;
	bad |= bpf_testmod_test_struct_arg_4(struct_arg1, 1, 2, 3, struct_arg2) != 21;
	bad |= bpf_testmod_test_struct_arg_5() != 1;
	bad |= bpf_testmod_test_struct_arg_7(16, (void *)17, 18, 19, (void *)20,
					     struct_arg4) != 133;
	bad |= bpf_testmod_test_struct_arg_8(16, (void *)17, 18, 19, (void *)20,
					     struct_arg4, 23) != 156;
	bad |= bpf_testmod_test_struct_arg_9(16, (void *)17, 18, 19, (void *)20, 21, 22,
					     struct_arg5, 27) != 258;
	bad |= bpf_testmod_test_struct_arg_6(&struct_arg3.s) != 1;
	return bad ? -EFAULT : 0;
}
