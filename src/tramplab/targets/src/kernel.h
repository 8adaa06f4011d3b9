/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Minimal freestanding stand-ins for the kernel headers the traced functions need.
 * Nothing here may make the compiler emit a call to a library routine: the objects are
 * loaded as-is by tramplab's ELF loader, which only resolves symbols they define.  No system
 * header is included, so the debug info names no path outside this directory.
 */
#ifndef TRAMPLAB_KERNEL_H
#define TRAMPLAB_KERNEL_H

typedef signed char s8;
typedef unsigned char u8;
typedef short s16;
typedef unsigned short u16;
typedef int s32;
typedef unsigned int u32;
typedef long long s64;
typedef unsigned long long __u64;	/* uapi spelling, used by bpf_testmod */
typedef __u64 u64;

#define EFAULT		14

#define __used		__attribute__((__used__))
#define noinline	__attribute__((__noinline__))

/*
 * A function the selftests attach to.  `noinline` keeps a real call and a patchable entry;
 * `__used` keeps it even if nothing here calls it.  The callers live in this same translation
 * unit (as in net/bpf/test_run.c), so interprocedural analysis must not see through the call:
 * gcc's `noipa` forbids it (no constant propagation into or out of the callee, no ipa-ra, no
 * ipa-sra clones); clang only propagates across calls into functions with internal linkage,
 * and these are all external.
 */
#ifdef __clang__
#define __traced	noinline __used
#else
#define __traced	noinline __used __attribute__((__noipa__))
#endif

/*
 * Make the compiler forget what it knows about a value (the kernel's barrier_var()).  clang
 * still specializes and folds calls to tiny external functions such as `return (long)arg;` or
 * `return 0;` when the caller is in the same unit (net/bpf/test_run.c has the same fix in
 * bpf_fentry_test7()); the empty asm makes the result opaque so the call stays.
 */
#define barrier_var(var)	__asm__ __volatile__("" : "+r"(var))

#endif /* TRAMPLAB_KERNEL_H */
