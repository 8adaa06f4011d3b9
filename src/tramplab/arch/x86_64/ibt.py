"""x86 IBT sealing at boot: apply_seal_endbr (arch/x86/kernel/alternative.c, v5.18+).

objtool lists every function whose endbr64 is superfluous -- its address is never taken, so it
is never the target of an indirect call or jump (section .ibt_endbr_seal) -- and at boot
apply_seal_endbr() overwrites each listed endbr64 with gen_endbr_poison(), a 4-byte nop
(trampoline.gen_endbr_poison: which one depends on the version).  Nothing else about the
function changes: its ftrace site stays at func+4 and is_endbr() still accepts the poison, so a
BPF trampoline still calls func+9 and kprobe.multi's get_entry_ip() still steps back over it.

"Address taken" is decided as objtool's validate_ibt() does, from the object's relocations: a
reference to a function's first byte that is not the rel32 operand of a direct call/jmp/jcc
(in code), or any reference from a data section other than those objtool skips (they hold
text addresses without the intent to branch there: __mcount_loc, the exception table...).
What the model's objects cannot show -- references from the rest of the real kernel -- comes
from ADDRESS_TAKEN, each with its source.

Measured by `tramplab oracle` on Debian's 6.12.117, 7.2.12 and 7.3.4 (tests/oracle consoles):
bpf_fentry_test1 keeps endbr64; bpf_fentry_test2..6, bpf_modify_return_test and
bpf_modify_return_test2 are sealed.
"""
from __future__ import annotations

from ...errors import UsageError
from ...profiles import has
from . import encode as X
from .trampoline import gen_endbr_poison

# Functions of the model's objects whose address the real kernel takes elsewhere: name -> where.
ADDRESS_TAKEN = {
    # EXPORT_SYMBOL_GPL puts &bpf_fentry_test1 in __ksymtab_gpl (for bpf_testmod), so objtool
    # keeps its endbr64 -- as `tramplab oracle` sees on Debian's 6.12.117 and 7.2.12
    "bpf_fentry_test1": "EXPORT_SYMBOL_GPL(bpf_fentry_test1), net/bpf/test_run.c",
    # a livepatch names its new functions in struct klp_func .new_func
    # (samples/livepatch/livepatch-sample.c: .new_func = livepatch_cmdline_proc_show)
    "livepatch_bpf_fentry_test1": "klp_func.new_func of the livepatch that installs it",
    "livepatch_bpf_fentry_test2": "klp_func.new_func of the livepatch that installs it",
}

# Data sections whose text references objtool's validate_ibt() ignores (tools/objtool/check.c)
SKIPPED_SECTIONS = ("__mcount_loc", "__patchable_function_entries", ".altinstructions",
                    ".orc_unwind_ip", ".retpoline_sites", ".static_call_sites", "__bug_table",
                    "__ex_table", "__jump_table", "_error_injection_whitelist",
                    "_kprobe_blacklist", ".smp_locks", ".parainstructions", ".kcfi_traps")
PCREL = ("R_X86_64_PC32", "R_X86_64_PLT32")
# opcodes a rel32 follows in a direct branch: call, jmp, and jcc (0f 80..8f)
_CALL, _JMP = 0xE8, 0xE9


def _direct_branch(read, ref) -> bool:
    """The rel32 of `call`/`jmp`/`jcc` at ref.place: objtool's jump/call destination, which is
    not an address taken."""
    if ref.type not in PCREL:
        return False
    try:
        op = read(ref.place - 2, 2)
    except UsageError:                      # the field starts its section: no opcode before it
        return False
    return op[1] in (_CALL, _JMP) or (op[0] == 0x0F and 0x80 <= op[1] <= 0x8F)


def address_taken(obj, read) -> set[str]:
    """Functions of `obj` with a reference to their first byte other than a direct branch."""
    starts = {f.addr: f.name for f in obj.functions()}
    taken = set()
    for ref in obj.refs:
        if ref.section.startswith(".debug") or ref.section in SKIPPED_SECTIONS:
            continue
        # a pc-relative field is 4 bytes before the end of its instruction (objtool's
        # arch_dest_reloc_offset: addend + 4) -- for `lea func(%rip)` as for `call func`
        to = ref.target + 4 if ref.type in PCREL else ref.target
        name = starts.get(to & (2**64 - 1))
        if name is not None and not (ref.section.startswith(".text") and
                                     _direct_branch(read, ref)):
            taken.add(name)
    return taken


def seals(kernel) -> bool:
    """An IBT build (the fentry-ibt layout) of a kernel with X86_KERNEL_IBT (v5.18)."""
    return (kernel.layout.entry.landing_pad_name == "endbr64"
            and has(kernel.arch.name, "ibt", kernel.profile.kernel))


def apply_seal_endbr(kernel) -> list[str]:
    """Poison the endbr64 of every function of the loaded images whose address is not taken;
    returns their names.  Runs before anything executes (alternative_instructions())."""
    if not seals(kernel):
        return []
    memory = kernel.machine.memory
    poison = gen_endbr_poison(kernel.jit_options)
    sealed = []
    for obj in kernel.images:
        keep = address_taken(obj, obj.read) | set(ADDRESS_TAKEN)
        for f in obj.functions():
            if f.name not in keep and memory.read(f.addr, 4) == X.endbr64():
                memory.write(f.addr, poison)
                sealed.append(f.name)
    return sealed
