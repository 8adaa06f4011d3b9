"""Tiny hand-written programs per arch for machine tests (test data, built with our encoders).

Each builder is `gen(e, **addrs)` for `tramplab.jit.assemble`; the comment on every line is the
assembly it emits.
"""
from tramplab.arch.arm64 import encode as A
from tramplab.arch.riscv64 import encode as R
from tramplab.arch.x86_64 import encode as X


# --- return a constant -------------------------------------------------------------------------
def x86_ret_const(e, value):
    e.emit(X.mov_imm64("rax", value))         # mov eax, value
    e.emit(X.ret())                           # ret


def arm64_ret_const(e, value):
    e.emit(A.mov_imm64("x0", value))          # mov x0, #value
    e.emit(A.ret())                           # ret


def riscv_ret_const(e, value):
    e.emit(R.li("a0", value))                 # li a0, value
    e.emit(R.ret())                           # ret


# --- call a host function, then use a scratch (wrong) or callee-saved (right) register ---------
def x86_after_call(e, host, scratch):
    reg = "rcx" if scratch else "rbx"
    e.emit(X.push("rbx"))                     # push rbx
    e.emit(X.mov_imm64(reg, 5))               # mov reg, 5
    e.emit(X.call_rel32(e.pc, host))          # call host
    e.emit(X.add_rr("rax", reg))              # add rax, reg
    e.emit(X.pop("rbx"))                      # pop rbx
    e.emit(X.ret())                           # ret


def arm64_after_call(e, host, scratch):
    reg = "x9" if scratch else "x19"
    e.emit(A.stp_pre("x29", "x30", "sp", -32))  # stp x29, x30, [sp, #-32]!
    e.emit(A.str_("x19", "sp", 16))           # str x19, [sp, #16]
    e.emit(A.movz(reg, 5))                    # mov reg, #5
    e.emit(A.bl(e.pc, host))                  # bl host
    e.emit(A.add_reg("x0", "x0", reg))        # add x0, x0, reg
    e.emit(A.ldr("x19", "sp", 16))            # ldr x19, [sp, #16]
    e.emit(A.ldp_post("x29", "x30", "sp", 32))  # ldp x29, x30, [sp], #32
    e.emit(A.ret())                           # ret


def riscv_after_call(e, host, scratch):
    reg = "t0" if scratch else "s1"
    e.emit(R.addi("sp", "sp", -16))           # addi sp, sp, -16
    e.emit(R.sd("ra", "sp", 8))               # sd ra, 8(sp)
    e.emit(R.sd("s1", "sp", 0))               # sd s1, 0(sp)
    e.emit(R.li(reg, 5))                      # li reg, 5
    e.emit(R.auipc_jalr("ra", "ra", e.pc, host))  # auipc ra, hi; jalr ra, lo(ra)
    e.emit(R.add("a0", "a0", reg))            # add a0, a0, reg
    e.emit(R.ld("s1", "sp", 0))               # ld s1, 0(sp)
    e.emit(R.ld("ra", "sp", 8))               # ld ra, 8(sp)
    e.emit(R.addi("sp", "sp", 16))            # addi sp, sp, 16
    e.emit(R.ret())                           # ret


# --- call `target` in a loop until it returns `want`; returns the number of calls ----------------
def x86_loop_until(e, target, want):
    e.emit(X.push("rbx"))                     # push rbx
    e.emit(X.xor_rr32("ebx", "ebx"))          # xor ebx, ebx
    e.label("again")
    e.emit(X.add_ri("rbx", 1))                # add rbx, 1
    e.emit(X.call_rel32(e.pc, target))        # call target
    e.emit(X.cmp_ri("rax", want))             # cmp rax, want
    e.emit(X.jcc_rel32("ne", e.pc, e.label_addr("again")))  # jne again
    e.emit(X.mov_rr("rax", "rbx"))            # mov rax, rbx
    e.emit(X.pop("rbx"))                      # pop rbx
    e.emit(X.ret())                           # ret


def arm64_loop_until(e, target, want):
    e.emit(A.stp_pre("x29", "x30", "sp", -32))  # stp x29, x30, [sp, #-32]!
    e.emit(A.str_("x19", "sp", 16))           # str x19, [sp, #16]
    e.emit(A.movz("x19", 0))                  # mov x19, #0
    e.label("again")
    e.emit(A.add_imm("x19", "x19", 1))        # add x19, x19, #1
    e.emit(A.bl(e.pc, target))                # bl target
    e.emit(A.cmp_imm("x0", want))             # cmp x0, #want
    e.emit(A.b_cond("ne", e.pc, e.label_addr("again")))  # b.ne again
    e.emit(A.mov("x0", "x19"))                # mov x0, x19
    e.emit(A.ldr("x19", "sp", 16))            # ldr x19, [sp, #16]
    e.emit(A.ldp_post("x29", "x30", "sp", 32))  # ldp x29, x30, [sp], #32
    e.emit(A.ret())                           # ret


def riscv_loop_until(e, target, want):
    e.emit(R.addi("sp", "sp", -16))           # addi sp, sp, -16
    e.emit(R.sd("ra", "sp", 8))               # sd ra, 8(sp)
    e.emit(R.sd("s1", "sp", 0))               # sd s1, 0(sp)
    e.emit(R.li("s1", 0))                     # li s1, 0
    e.label("again")
    e.emit(R.addi("s1", "s1", 1))             # addi s1, s1, 1
    e.emit(R.auipc_jalr("ra", "ra", e.pc, target))  # call target
    e.emit(R.addi("a0", "a0", -want))         # addi a0, a0, -want
    e.emit(R.bnez("a0", e.pc, e.label_addr("again")))  # bnez a0, again
    e.emit(R.mv("a0", "s1"))                  # mv a0, s1
    e.emit(R.ld("s1", "sp", 0))               # ld s1, 0(sp)
    e.emit(R.ld("ra", "sp", 8))               # ld ra, 8(sp)
    e.emit(R.addi("sp", "sp", 16))            # addi sp, sp, 16
    e.emit(R.ret())                           # ret


# --- recurse forever (stack overflow) and spin forever (lockup) ------------------------------------
def x86_recurse(e):
    e.emit(X.push("rbp"))                     # push rbp
    e.emit(X.call_rel32(e.pc, e.base))        # call self


def arm64_recurse(e):
    e.emit(A.stp_pre("x29", "x30", "sp", -16))  # stp x29, x30, [sp, #-16]!
    e.emit(A.bl(e.pc, e.base))                # bl self


def riscv_recurse(e):
    e.emit(R.addi("sp", "sp", -16))           # addi sp, sp, -16
    e.emit(R.sd("ra", "sp", 8))               # sd ra, 8(sp)
    e.emit(R.jal("ra", e.pc, e.base))         # jal self


def x86_spin(e):
    e.emit(X.jmp_rel8(e.pc, e.pc))            # 1: jmp 1b


def arm64_spin(e):
    e.emit(A.b(e.pc, e.pc))                   # 1: b 1b


def riscv_spin(e):
    e.emit(R.j(e.pc, e.pc))                   # 1: j 1b


SNIPPETS = {
    "x86_64": dict(ret_const=x86_ret_const, after_call=x86_after_call,
                   loop_until=x86_loop_until, recurse=x86_recurse, spin=x86_spin),
    "arm64": dict(ret_const=arm64_ret_const, after_call=arm64_after_call,
                  loop_until=arm64_loop_until, recurse=arm64_recurse, spin=arm64_spin),
    "riscv64": dict(ret_const=riscv_ret_const, after_call=riscv_after_call,
                    loop_until=riscv_loop_until, recurse=riscv_recurse, spin=riscv_spin),
}
