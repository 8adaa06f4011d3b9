// SPDX-License-Identifier: GPL-2.0
/*
 * One translation unit per object: the pieces below are #included so that every layout is
 * a single `cc -c` (no linker involved) and the callers call their targets directly.
 */
#include "test_run.c"
#include "bpf_testmod.c"
#include "livepatch_sample.c"
#include "explore_targets.c"
#include "bpf_testmod_struct.c"
