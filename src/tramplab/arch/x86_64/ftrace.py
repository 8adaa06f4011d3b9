"""x86-64 ftrace: the 5-byte patch site, ftrace_caller / ftrace_regs_caller, the int3 text-poke
protocol (arch/x86/kernel/ftrace.c, ftrace_64.S, alternative.c; kernel-anchors.md §1.1, §1.4).

Site states (at rec->ip = the compiler's nop5, func+0 or func+4 after endbr64):

    disabled   0f 1f 44 00 00        nop5
    ftrace     e8 <rel32>            call ftrace_caller | ftrace_regs_caller
    direct     e8 <rel32>            call <trampoline>     (only the direct ops on the record)
    jmp mode   e9 <rel32>            jmp <trampoline>      (v6.19+: address with bit 0 set)

A caller reached by `call` sees [rsp] = return into the function (site+5), [rsp+8] = parent.

Sites change under the int3 protocol (`apply`), because x86 promises nothing to a CPU that
fetches a multi-byte instruction while another CPU writes it, and a CPU that does not serialise
may go on executing what it fetched before (Intel SDM vol. 3A, cross-modifying code; ArchInfo
.ifetch).  On a machine with weak instruction fetch (machine/machine.py) the protocol's three
text_poke_sync() calls are what makes every CPU see each phase; the faults "no-int3" and
"int3-no-sync" (port.py, faults.py) take them away.
"""
from __future__ import annotations

from typing import Generator

from ...errors import EncodeError, KernelError
from ...faults import fault
from ...machine.memory import MemoryFault
from ...ftrace.arch_api import ArchFtrace, SiteState, TextWrite
from ...jit import assemble
from ...unwind import code_table
from . import encode as X
from .frames import leave_frame, push, push_rbp_frame
from .trampoline import ENDBR_INSN_SIZE, is_endbr

NOP5 = X.nop(5)
INT3 = b"\xcc"
MCOUNT_INSN_SIZE = 5

# struct pt_regs, in 8-byte slots (arch/x86/include/asm/ptrace.h): the frame ftrace_regs_caller
# builds and ftrace_caller fills partially (WITH_ARGS: the argument registers, ip, sp).
PT_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
           "rdx", "rsi", "rdi", "orig_ax", "ip", "cs", "flags", "sp", "ss")
PT = {name: 8 * i for i, name in enumerate(PT_REGS)}
PTREGS_SIZE = 8 * len(PT_REGS)
# save_mcount_regs pushes rbp and two fake frame records (parent, then the function) before the
# pt_regs: five 8-byte slots.  MCOUNT_REG_SIZE is the distance from the pt_regs to the slot
# holding the return-into-function address.
MCOUNT_REG_SIZE = PTREGS_SIZE + 5 * 8
ARG_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
ARG_SAVE = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9")
REST_SAVE = ("r15", "r14", "r13", "r12", "r11", "r10", "rbx")


class Fregs:
    """ftrace_regs / pt_regs view for Python callbacks."""

    def __init__(self, cpu, memory, addr: int):
        self.cpu = cpu
        self.memory = memory
        self.addr = addr

    def arg(self, i: int) -> int:
        return self.memory.read_u64(self.addr + PT[ARG_REGS[i]])

    @property
    def ip(self) -> int:
        """Where the caller returns: the function body, or what an IPMODIFY ops set."""
        return self.memory.read_u64(self.addr + PT["ip"])

    @ip.setter
    def ip(self, value: int) -> None:
        self.memory.write_u64(self.addr + PT["ip"], value)

    @property
    def sp(self) -> int:
        return self.memory.read_u64(self.addr + PT["sp"])

    @property
    def parent_ip(self) -> int:
        return self.memory.read_u64(self.sp)


def _save_mcount_regs(e, added: int, with_args_regs: bool = True) -> None:
    """Push rbp and two frame records (so unwinders see parent and function), make room for
    pt_regs and save the argument registers.  On entry [rsp+added] = return into the function.
    The CFA stays rsp-based throughout (as objtool describes ftrace_caller)."""
    e.emit(X.push("rbp"))                                  # push rbp  (the original rbp)
    e.cfi_adjust_cfa_offset(8)
    e.cfi_offset("rbp", -16 - added)
    e.emit(X.push_mem("rsp", added + 16))                  # push [rsp+added+16]  (parent ip)
    e.cfi_adjust_cfa_offset(8)
    push(e, "rbp")                                         # push rbp
    e.emit(X.mov_rr("rbp", "rsp"))                         # mov rbp, rsp   (parent frame)
    e.emit(X.push_mem("rsp", added + 24))                  # push [rsp+added+24]  (function ip)
    e.cfi_adjust_cfa_offset(8)
    push(e, "rbp")                                         # push rbp
    e.emit(X.mov_rr("rbp", "rsp"))                         # mov rbp, rsp   (function frame)
    e.emit(X.sub_ri("rsp", PTREGS_SIZE))                   # sub rsp, sizeof(pt_regs)
    e.cfi_adjust_cfa_offset(PTREGS_SIZE)
    for reg in ARG_SAVE:
        e.emit(X.mov_store("rsp", PT[reg], reg))           # mov [rsp+REG], reg
    e.emit(X.mov_store_imm32("rsp", PT["orig_ax"], 0))     # mov qword [rsp+ORIG_RAX], 0
    e.emit(X.mov_load("rdx", "rsp", MCOUNT_REG_SIZE - 8))  # mov rdx, [rsp+MCOUNT_REG_SIZE-8]
    e.emit(X.mov_store("rsp", PT["rbp"], "rdx"))           # mov [rsp+RBP], rdx  (original rbp)
    # the pt_regs copy is the one restored (the direct path reuses the first slot)
    e.cfi_offset("rbp", PT["rbp"] - (MCOUNT_REG_SIZE + added + 8))
    e.emit(X.mov_load("rsi", "rsp", MCOUNT_REG_SIZE + added + 8))  # mov rsi, [..]  (parent ip)
    e.emit(X.mov_load("rdi", "rsp", MCOUNT_REG_SIZE + added))      # mov rdi, [..]  (return addr)
    e.emit(X.mov_store("rsp", PT["ip"], "rdi"))            # mov [rsp+RIP], rdi
    e.emit(X.sub_ri("rdi", MCOUNT_INSN_SIZE))              # sub rdi, 5  (ip of the call site)


def _restore_mcount_regs(e, keep: int = 0) -> None:
    e.emit(X.mov_load("rbp", "rsp", PT["rbp"]))            # mov rbp, [rsp+RBP]
    e.cfi_restore("rbp")
    for reg in reversed(ARG_SAVE):
        e.emit(X.mov_load(reg, "rsp", PT[reg]))            # mov reg, [rsp+REG]
    e.emit(X.add_ri("rsp", MCOUNT_REG_SIZE - keep))        # add rsp, MCOUNT_REG_SIZE - keep
    e.cfi_adjust_cfa_offset(keep - MCOUNT_REG_SIZE)


def _load_function_trace_op(e, op_var: int) -> None:
    # function_trace_op lives in kernel data next to the text; the kernel reads it rip-relative,
    # here an absolute load keeps the encoder set small (same value, one instruction more).
    e.emit(X.movabs("rdx", op_var))                        # movabs rdx, &function_trace_op
    e.emit(X.mov_load("rdx", "rdx", 0))                    # mov rdx, [rdx]


def gen_ftrace_caller(e, op_var: int, stub: int, with_args: bool) -> None:
    """ftrace_caller: callbacks get (ip, parent_ip, op, fregs); WITH_ARGS kernels pass the
    partial pt_regs and honour an ip change, older ones pass NULL regs."""
    _save_mcount_regs(e, 0)
    e.emit(X.lea("rcx", "rsp", MCOUNT_REG_SIZE + 8))       # lea rcx, [rsp+MCOUNT_REG_SIZE+8]
    e.emit(X.mov_store("rsp", PT["sp"], "rcx"))            # mov [rsp+RSP], rcx
    _load_function_trace_op(e, op_var)
    if with_args:
        e.emit(X.mov_rr("rcx", "rsp"))                     # mov rcx, rsp   (fregs)
    else:
        e.emit(X.xor_rr32("ecx", "ecx"))                   # xor ecx, ecx   (regs = NULL)
    e.emit(X.mov_store_imm32("rsp", PT["cs"], 0))          # mov qword [rsp+CS], 0
    e.label("ftrace_call")
    e.emit(X.call_rel32(e.pc, stub))                       # ftrace_call: call ftrace_stub
    if with_args:
        e.emit(X.mov_load("rax", "rsp", PT["ip"]))         # mov rax, [rsp+RIP]  (handlers may change it)
        e.emit(X.mov_store("rsp", MCOUNT_REG_SIZE, "rax"))  # mov [rsp+MCOUNT_REG_SIZE], rax
    _restore_mcount_regs(e)
    e.emit(X.ret())                                        # ret  (into the function)


def gen_ftrace_regs_caller(e, op_var: int, stub: int, jmp_mode: bool) -> None:
    """ftrace_regs_caller: full pt_regs; after the callbacks, a non-zero orig_ax (set by
    arch_ftrace_set_direct_caller) turns the return into a jump to the direct trampoline with
    the stack as the site's call left it (v6.19: bit 0 set = enter it as if jumped to)."""
    e.emit(X.pushfq())                                     # pushfq
    e.cfi_adjust_cfa_offset(8)
    _save_mcount_regs(e, 8)
    _load_function_trace_op(e, op_var)
    for reg in REST_SAVE:
        e.emit(X.mov_store("rsp", PT[reg], reg))           # mov [rsp+REG], reg
    e.emit(X.mov_load("rcx", "rsp", MCOUNT_REG_SIZE))      # mov rcx, [rsp+MCOUNT_REG_SIZE]  (flags)
    e.emit(X.mov_store("rsp", PT["flags"], "rcx"))         # mov [rsp+EFLAGS], rcx
    e.emit(X.lea("rcx", "rsp", MCOUNT_REG_SIZE + 16))      # lea rcx, [rsp+MCOUNT_REG_SIZE+16]
    e.emit(X.mov_store("rsp", PT["sp"], "rcx"))            # mov [rsp+RSP], rcx
    e.emit(X.mov_rr("rcx", "rsp"))                         # mov rcx, rsp   (regs)
    e.label("ftrace_regs_call")
    e.emit(X.call_rel32(e.pc, stub))                       # ftrace_regs_call: call ftrace_stub
    e.emit(X.mov_load("rax", "rsp", PT["flags"]))          # mov rax, [rsp+EFLAGS]
    e.emit(X.mov_store("rsp", MCOUNT_REG_SIZE, "rax"))     # mov [rsp+MCOUNT_REG_SIZE], rax
    e.emit(X.mov_load("rax", "rsp", PT["ip"]))             # mov rax, [rsp+RIP]  (handlers may change it)
    e.emit(X.mov_store("rsp", MCOUNT_REG_SIZE + 8, "rax"))  # mov [rsp+MCOUNT_REG_SIZE+8], rax
    for reg in reversed(REST_SAVE):
        e.emit(X.mov_load(reg, "rsp", PT[reg]))            # mov reg, [rsp+REG]
    e.emit(X.mov_load("rax", "rsp", PT["orig_ax"]))        # mov rax, [rsp+ORIG_RAX]
    e.emit(X.test_rr("rax", "rax"))                        # test rax, rax
    e.emit(X.jcc_rel32("nz", e.pc, e.label_addr("direct")))  # jnz direct
    e.cfi_remember_state()
    _restore_mcount_regs(e)
    e.emit(X.popfq())                                      # popfq
    e.cfi_adjust_cfa_offset(-8)
    e.emit(X.ret())                                        # ret  (into the function)
    e.cfi_restore_state()
    e.label("direct")
    if jmp_mode:
        e.emit(X.mov_rr("rdi", "rax"))                     # mov rdi, rax   (rdi is restored below)
        e.emit(X.and_ri("rdi", 1))                         # and rdi, 1     (bit 0: enter by jmp)
        e.emit(X.jcc_rel32("nz", e.pc, e.label_addr("direct_jmp")))  # jnz direct_jmp
    e.emit(X.mov_load("rdi", "rsp", MCOUNT_REG_SIZE))      # mov rdi, [rsp+MCOUNT_REG_SIZE]  (flags)
    e.emit(X.mov_store("rsp", MCOUNT_REG_SIZE - 8, "rdi"))  # mov [rsp+MCOUNT_REG_SIZE-8], rdi
    e.emit(X.mov_store("rsp", MCOUNT_REG_SIZE, "rax"))     # mov [rsp+MCOUNT_REG_SIZE], rax  (trampoline)
    if jmp_mode:
        e.cfi_remember_state()
    _restore_mcount_regs(e, keep=8)
    e.emit(X.popfq())                                      # popfq
    e.cfi_adjust_cfa_offset(-8)
    e.emit(X.ret())                                        # ret  (to the trampoline: [rsp] = function)
    if jmp_mode:
        e.cfi_restore_state()
        e.label("direct_jmp")
        e.emit(X.and_ri("rax", -2))                        # and rax, ~1
        e.emit(X.mov_store("rsp", MCOUNT_REG_SIZE + 8, "rax"))  # mov [rsp+MCOUNT_REG_SIZE+8], rax
        # the function's return address is now the trampoline's: the function's frame becomes
        # the trampoline's, entered as if jumped to ([rsp] = parent once we return)
        _restore_mcount_regs(e)
        e.emit(X.popfq())                                  # popfq
        e.cfi_adjust_cfa_offset(-8)
        e.emit(X.ret())                                    # ret  (to the trampoline: [rsp] = parent)


class ArchFtraceImpl(ArchFtrace):
    def install(self) -> None:
        k = self.kernel
        self.op_var = self.core.function_trace_op
        stub = self.core.stub_func
        base = k.text_arena.alloc(0x400, 16)
        caller = assemble(lambda e: gen_ftrace_caller(e, self.op_var, stub, self.profile.with_args),
                          base)
        self.machine.write_text(base, caller.code)
        self.machine.kallsyms.add("ftrace_caller", base, len(caller.code), "t",
                                  unwind=code_table(self.machine.arch, base, len(caller.code),
                                                    caller.cfi))
        self._caller = base
        self._call_sites = [caller.labels["ftrace_call"]]
        rbase = (caller.end + 15) & ~15
        regs = assemble(lambda e: gen_ftrace_regs_caller(e, self.op_var, stub, self.profile.jmp),
                        rbase)
        self.machine.write_text(rbase, regs.code)
        self.machine.kallsyms.add("ftrace_regs_caller", rbase, len(regs.code), "t",
                                  unwind=code_table(self.machine.arch, rbase, len(regs.code),
                                                    regs.cfi))
        self._regs_caller = rbase
        self._call_sites.append(regs.labels["ftrace_regs_call"])
        self.labels = {"ftrace_caller": base, "ftrace_call": caller.labels["ftrace_call"],
                       "ftrace_regs_caller": rbase,
                       "ftrace_regs_call": regs.labels["ftrace_regs_call"]}
        self._poking: dict[int, bytes] = {}
        self._trampolines: dict[int, str] = {}
        self.machine.trap_handlers.append(self._int3_handler)

    # -- per-ops trampolines (arch/x86/kernel/ftrace.c create_trampoline) --------------------
    def create_trampoline(self, ops, func: int, regs: bool) -> int:
        """A copy of ftrace_caller (ftrace_regs_caller if the ops needs regs) whose op is the
        ops pointer stored right after the code and whose ftrace_call calls `func`: a site
        this ops alone traces calls it, so no global variable decides what that call does."""
        def gen(e, op_slot):
            if regs:
                gen_ftrace_regs_caller(e, op_slot, func, self.profile.jmp)
            else:
                gen_ftrace_caller(e, op_slot, func, self.profile.with_args)
        size = len(assemble(lambda e: gen(e, 0), self.machine.modules.start).code)
        slot_off = (size + 7) & ~7
        base = self.machine.module_arena.alloc(slot_off + 8)
        asm = assemble(lambda e: gen(e, base + slot_off), base)
        code = asm.code
        data = code + bytes(slot_off - len(code)) + ops.mem.to_bytes(8, "little")
        self.machine.write_text(base, data)
        # orc_ftrace_find: the copy unwinds with ftrace_caller's (ftrace_regs_caller's) entries
        self.machine.kallsyms.add(f"ftrace_trampoline:{ops.mem_name}", base, len(data), "t",
                                  "[__builtin__ftrace]",
                                  unwind=code_table(self.machine.arch, base, len(code), asm.cfi))
        self._trampolines[base] = f"ftrace_trampoline:{ops.mem_name}"
        return base

    def free_trampoline(self, addr: int) -> None:
        size = self.machine.module_arena.free(addr)
        self.machine.write_text(addr, b"\xcc" * size)
        self.machine.kallsyms.remove(self._trampolines.pop(addr))

    def entry_ip(self, fentry_ip: int) -> int:
        """get_entry_ip() under CONFIG_X86_KERNEL_IBT: `if (is_endbr(*(u32 *)(fentry_ip -
        ENDBR_INSN_SIZE))) fentry_ip -= ENDBR_INSN_SIZE;` -- is_endbr() also accepts this
        version's poison, so a sealed function's entry ip is its address too.  At the start of
        a page the kernel reads with get_kernel_nofault(): nothing mapped there, no step back."""
        try:
            word = self.machine.memory.read(fentry_ip - ENDBR_INSN_SIZE, ENDBR_INSN_SIZE)
        except MemoryFault:
            return fentry_ip
        return fentry_ip - ENDBR_INSN_SIZE if is_endbr(word, self.kernel.jit_options) \
            else fentry_ip

    # -- records and sites ------------------------------------------------------------
    def rec_ip(self, site) -> int:
        return site.addr

    def boot_writes(self, rec) -> list[TextWrite]:
        # -mnop-mcount already left the kernel's nop5; verify it like ftrace_init_nop does.
        have = self.machine.memory.read(rec.ip, 5)
        return [] if have == NOP5 else [TextWrite(rec.ip, NOP5, NOP5, "site")]

    @property
    def ftrace_addr(self) -> int:
        return self._caller

    @property
    def ftrace_regs_addr(self) -> int:
        return self._regs_caller

    def _insn(self, ip: int, state: SiteState) -> bytes:
        if state.target is None:
            return NOP5
        try:
            if state.jmp:
                return X.jmp_rel32(ip, state.target)
            return X.call_rel32(ip, state.target)
        except EncodeError as e:
            raise KernelError("ERANGE", f"x86 sites reach only +/-2 GiB (module_alloc keeps "
                                        f"trampolines in range): {e}") from None

    def callable_addr(self, rec, addr: int) -> int:
        self._insn(rec.ip, SiteState(addr))       # raises ERANGE if unreachable
        return addr

    def transition(self, rec, old: SiteState, new: SiteState) -> list[TextWrite]:
        a, b = self._insn(rec.ip, old), self._insn(rec.ip, new)
        return [] if a == b else [TextWrite(rec.ip, a, b, "site")]

    def site_bytes(self, rec, state: SiteState) -> dict[int, bytes]:
        return {rec.ip: self._insn(rec.ip, state)}

    def func_writes(self, old_func: int | None, func_addr: int) -> list[TextWrite]:
        out = []
        for site in self._call_sites:
            old = (self.machine.memory.read(site, 5) if old_func is None
                   else X.call_rel32(site, old_func))
            new = X.call_rel32(site, func_addr)
            if old != new:
                out.append(TextWrite(site, old, new, "ftrace_call"))
        return out

    # -- the int3 protocol (smp_text_poke_batch_*) ------------------------------------------
    def apply(self, writes: list[TextWrite]) -> Generator:
        """Phase 1: int3 over the first byte of every changed instruction, sync; phase 2: the
        tail bytes, sync; phase 3: the new first bytes, sync.  A CPU that hits an int3 meanwhile
        has the new instruction emulated by the int3 handler.

        Each sync is text_poke_sync() = on_each_cpu(do_sync_core): every CPU serialises, so in
        the weak instruction-fetch mode it drops what it fetched before (Machine.icache_sync).
        The writes are Machine.poke_text(_steps): in weak mode a tail is written byte by byte
        in any order, other CPUs running in between -- harmless behind a synchronised int3.
        Faults (faults.py): "no-int3" writes each instruction's bytes directly, with no int3
        and no sync; "int3-no-sync" keeps the three phases but drops their text_poke_sync()."""
        if fault(self.profile, "no-int3"):
            yield from self._apply_direct(writes)
            return
        m = self.machine
        sync = not fault(self.profile, "int3-no-sync")
        self._poking = {w.addr: w.new for w in writes}
        try:
            for w in writes:
                m.poke_text(w.addr, INT3)
            yield from self._text_poke_sync(sync)
            for w in writes:
                if len(w.new) > 1:
                    yield from m.poke_text_steps(w.addr + 1, w.new[1:])
            yield from self._text_poke_sync(sync)
            for w in writes:
                m.poke_text(w.addr, w.new[:1])
            yield from self._text_poke_sync(sync)
        finally:
            self._poking = {}

    def _text_poke_sync(self, sync: bool = True) -> Generator:
        """text_poke_sync(): an IPI making every CPU serialise (weak mode: the CPUs run on until
        it reaches them), then a point where other CPUs run."""
        if sync:
            yield from self.machine.icache_sync_steps()
            self.core.stats.sync_cores += 1
        yield

    def _apply_direct(self, writes: list[TextWrite]) -> Generator:
        """The fault "no-int3": each changed instruction's bytes written in place (pieces in
        any order in weak mode), other CPUs running throughout, and no sync."""
        for w in writes:
            yield from self.machine.poke_text_steps(w.addr, w.new)
            yield

    def _int3_handler(self, cpu, intno: int) -> bool:
        if intno != 3:
            return False
        addr = cpu.pc - 1                                   # int3 leaves pc after itself
        new = self._poking.get(addr)
        if new is None:
            return False
        op = new[0]
        if op == 0xE8:                                      # int3_emulate_call
            target = (addr + 5 + int.from_bytes(new[1:5], "little", signed=True)) % 2**64
            sp = cpu.sp - 8
            self.machine.memory.write_u64(sp, addr + 5)
            cpu.sp = sp
            cpu.pc = target
        elif op == 0xE9:                                    # int3_emulate_jmp
            cpu.pc = (addr + 5 + int.from_bytes(new[1:5], "little", signed=True)) % 2**64
        else:                                               # a nop: skip it
            cpu.pc = addr + len(new)
        return True

    # -- ftrace_regs ------------------------------------------------------------------
    def fregs(self, cpu, addr: int):
        return Fregs(cpu, self.machine.memory, addr)

    def set_direct_caller(self, cpu, fregs_addr: int, addr: int) -> None:
        """arch_ftrace_set_direct_caller: regs->orig_ax = addr."""
        self.machine.memory.write_u64(fregs_addr + PT["orig_ax"], addr)

    def sample_direct(self, e, kind: str, entry_host: int, exit_host: int) -> None:
        """my_tramp of samples/ftrace/ftrace-direct*.c.  Entered by the site's call:
        [rsp] = return into the function, [rsp+8] = parent.  The C helper may clobber every
        argument register, so all six are saved (the kernel samples save what their target
        needs)."""
        push_rbp_frame(e)                                  # push rbp; mov rbp, rsp
        for reg in ARG_REGS:
            e.emit(X.push(reg))                            # push reg  (args, rsp stays 16-aligned)
        e.emit(X.call_rel32(e.pc, entry_host))             # call my_direct_func  (rdi = arg 0)
        for reg in reversed(ARG_REGS):
            e.emit(X.pop(reg))                             # pop reg
        if kind == "call":
            leave_frame(e)                                 # leave
            e.emit(X.ret())                                # ret  (into the function)
            return
        e.emit(X.mov_load("rax", "rbp", 8))                # mov rax, [rbp+8]  (the function body)
        e.emit(X.call_reg("rax"))                          # call rax  (run the function)
        e.emit(X.push("rax"))                              # push rax  (its return value)
        e.emit(X.push("rax"))                              # push rax  (keep rsp 16-aligned)
        e.emit(X.mov_rr("rdi", "rax"))                     # mov rdi, rax
        e.emit(X.call_rel32(e.pc, exit_host))              # call my_direct_func_exit
        e.emit(X.pop("rax"))                               # pop rax
        e.emit(X.pop("rax"))                               # pop rax
        leave_frame(e)                                     # leave
        e.emit(X.add_ri("rsp", 8))                         # add rsp, 8  (skip the function frame)
        e.emit(X.ret())                                    # ret  (to the parent)
