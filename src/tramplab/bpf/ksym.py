"""The names the kernel gives BPF code in kallsyms, so stack traces read as the kernel's do.

* bpf_trampoline_<key> (kernel/bpf/trampoline.c, bpf_tramp_image_alloc): key =
  bpf_trampoline_compute_key(): (tgt_prog->aux->id << 32) | btf_id for a program target,
  (btf_obj_id(btf) << 32) | 0x80000000 | btf_id for a kernel function (vmlinux BTF is object
  1): e.g. bpf_trampoline_6442453466.  Every image of one trampoline has the same name.
* bpf_prog_<tag>_<name> (kernel/bpf/core.c, bpf_get_prog_name): tag = the first 8 bytes of the
  SHA-1 of the program's instructions, name = the program's name (BPF_OBJ_NAME_LEN = 16 with
  the NUL).  The model's programs are Python bodies, not instructions: the tag hashes what
  stands in for them (kind, name, target), so it is stable and distinct per program, but not
  the value a real kernel would print.

BTF ids are the model's own numbering (1 + the function's rank by address), stable for one
kernel: like pointer values, they are not the kernel's.
"""
from __future__ import annotations

import hashlib

VMLINUX_BTF_OBJ_ID = 1
BPF_OBJ_NAME_LEN = 16


def btf_id(kernel, func: str) -> int:
    return kernel.btf_ids[func]


def trampoline_key(kernel, target) -> int:
    if isinstance(target, str):
        return (VMLINUX_BTF_OBJ_ID << 32) | 0x80000000 | btf_id(kernel, target)
    return (target.id << 32) | 1            # a program target: its main function's BTF id


def trampoline_name(kernel, target) -> str:
    return f"bpf_trampoline_{trampoline_key(kernel, target)}"


def prog_tag(prog) -> str:
    target = prog.target if isinstance(prog.target, str) else f"prog{getattr(prog.target, 'id', 0)}"
    seed = f"{prog.kind}:{prog.name}:{target}".encode()
    return hashlib.sha1(seed).digest()[:8].hex()


def prog_name(prog) -> str:
    return f"bpf_prog_{prog_tag(prog)}_{prog.name[:BPF_OBJ_NAME_LEN - 1]}"
