"""jit.Emitter's back-patched branches (emit_to) and assemble()'s passes: the same bytes as
the label_addr form, in one pass when no label had to be guessed."""
from tramplab.arch.riscv64 import encode as R
from tramplab.jit import assemble

BASE = 0x1000


def _counting(gen):
    calls = []

    def run(e):
        calls.append(1)
        gen(e)
    return run, calls


def _body(e, branch):
    e.emit(R.addi("a0", "a0", 1))
    branch(e)
    e.emit(R.addi("a1", "a1", 2))
    e.emit(R.addi("a2", "a2", 3))
    e.label("out")
    e.emit(R.jr("ra"))


def test_emit_to_forward_branch_matches_label_addr_in_one_pass():
    old, old_calls = _counting(lambda e: _body(
        e, lambda e: e.emit(R.beq("a0", "zero", e.pc, e.label_addr("out")))))
    new, new_calls = _counting(lambda e: _body(e, lambda e: e.emit_to("out", R.beq, "a0", "zero")))
    a, b = assemble(old, BASE), assemble(new, BASE)
    assert (a.code, a.labels) == (b.code, b.labels)
    assert len(old_calls) == 2 and len(new_calls) == 1


def test_backward_branches_only_need_one_pass():
    def gen(e):
        e.label("top")
        e.emit(R.addi("a0", "a0", -1))
        e.emit(R.bne("a0", "zero", e.pc, e.label_addr("top")))
        e.emit_to("top", R.beq, "a1", "zero")
    run, calls = _counting(gen)
    out = assemble(run, BASE)
    assert len(calls) == 1
    assert out.code[4:8] == R.bne("a0", "zero", BASE + 4, BASE)
    assert out.code[8:12] == R.beq("a1", "zero", BASE + 8, BASE)


def test_emit_to_a_label_never_defined_keeps_the_label_addr_answer():
    old = assemble(lambda e: e.emit(R.beq("a0", "zero", e.pc, e.label_addr("nowhere"))), BASE)
    new = assemble(lambda e: e.emit_to("nowhere", R.beq, "a0", "zero"), BASE)
    assert old.code == new.code == R.beq("a0", "zero", BASE, BASE)


def test_several_branches_to_one_label_are_all_patched():
    def gen(e):
        for reg in ("a0", "a1", "a2"):
            e.emit_to("out", R.beq, reg, "zero")
        e.label("out")
    out = assemble(gen, BASE)
    assert out.code == b"".join(R.beq(reg, "zero", BASE + 4 * i, BASE + 12)
                                for i, reg in enumerate(("a0", "a1", "a2")))
