// SPDX-License-Identifier: GPL-2.0
/*
 * A traced function that runs for a while, for the interleaving explorer.  Real traced
 * functions are long next to a trampoline's prologue, so a CPU is usually inside the original
 * when a trampoline image is replaced and put; bpf_fentry_test1..10 are a few instructions,
 * which makes that state rare.  This one loops n times (the empty asm keeps the compiler from
 * summing in closed form) and returns n * (n - 1) / 2.
 */
#include "kernel.h"

int __traced bpf_explore_loop(int n)
{
	int sum = 0;

	for (int i = 0; i < n; i++) {
		sum += i;
		asm volatile("" : "+r"(sum));
	}
	return sum;
}
