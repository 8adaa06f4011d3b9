// SPDX-License-Identifier: GPL-2.0
/*
 * The new versions a livepatch installs, like samples/livepatch/livepatch-sample.c: ordinary
 * kernel C that the livepatch's IPMODIFY ftrace_ops redirects callers to.  Each adds 100 more
 * than the original, so a test can tell which version ran.
 */
#include "kernel.h"

int __traced livepatch_bpf_fentry_test1(int a)
{
	return a + 101;
}

int __traced livepatch_bpf_fentry_test2(int a, u64 b)
{
	return a + b + 100;
}
