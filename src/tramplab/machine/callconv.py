"""C values <-> ABI slots, driven by the arch data and the function prototypes read from DWARF.

An argument becomes one 64-bit word (integers, pointers, structs <= 8 bytes) or two (structs of
9..16 bytes).  Words go to the argument registers in order, then to 8-byte stack slots; what
happens to a two-word struct when one register is left is the arch's `pair_overflow` rule.
Narrow integers are extended the way the callee may assume (sign or zero by type; RV64 also
sign-extends unsigned 32-bit values).
"""
from __future__ import annotations

from ..errors import UsageError

MASK64 = 0xFFFFFFFFFFFFFFFF


def sext(value: int, bits: int) -> int:
    """The low `bits` bits of value as a signed integer (sign extension)."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def to_word(arch, ctype, value: int) -> int:
    """One integer or pointer argument as the 64-bit register image the callee expects."""
    if not isinstance(value, int):
        raise UsageError(f"{ctype.name}: expected an integer, got {value!r}")
    bits = ctype.size * 8
    if ctype.kind == "ptr" or bits >= 64:
        lo, hi = -(1 << 63), (1 << 64) - 1
    elif ctype.signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = -(1 << (bits - 1)), (1 << bits) - 1   # accept -1 for unsigned, as C would
    if not lo <= value <= hi:
        raise UsageError(f"{value} does not fit in {ctype.name} ({ctype.size} bytes)")
    if ctype.kind == "ptr" or bits >= 64:
        return value & MASK64
    if ctype.signed or (arch.sign_extend_u32 and bits == 32):
        return sext(value, bits) & MASK64
    return value & ((1 << bits) - 1)


def struct_words(arch, ctype, value) -> list[int]:
    """A struct by value: given as bytes (laid out as the arch's memory holds them, so each
    word is what a doubleword load of the struct would put in a register), or as a sequence
    of 64-bit words."""
    nwords = (ctype.size + 7) // 8
    if isinstance(value, (bytes, bytearray)):
        if len(value) != ctype.size:
            raise UsageError(f"{ctype.name} is {ctype.size} bytes, got {len(value)}")
        data = bytes(value) + bytes(nwords * 8 - len(value))
        return [int.from_bytes(data[i:i + 8], arch.byteorder) for i in range(0, len(data), 8)]
    words = list(value) if isinstance(value, (list, tuple)) else None
    if words is None or len(words) != nwords or not all(isinstance(w, int) for w in words):
        raise UsageError(f"{ctype.name}: give {nwords} integer words (or {ctype.size} bytes)")
    for w in words:
        if not -(1 << 63) <= w <= MASK64:
            raise UsageError(f"{ctype.name}: word {w} does not fit in 64 bits (u64 or s64)")
    return [w & MASK64 for w in words]


def word_locations(arch, params) -> list[list[tuple[str, int]]]:
    """Where each parameter's words live at the call: ("reg", i) or ("stack", k), i indexing
    the argument registers and k the 8-byte stack slots (the rules of `assign`)."""
    nregs = len(arch.arg_regs)
    out: list[list[tuple[str, int]]] = []
    nreg = nstack = 0
    regs_closed = False
    for ctype in params:
        n = (ctype.size + 7) // 8 if ctype.kind == "struct" else 1
        free = 0 if regs_closed else nregs - nreg
        if n <= free:
            out.append([("reg", nreg + i) for i in range(n)])
            nreg += n
        elif n == 2 and free == 1 and arch.pair_overflow == "split":
            out.append([("reg", nreg), ("stack", nstack)])
            nreg, nstack = nreg + 1, nstack + 1
        else:
            out.append([("stack", nstack + i) for i in range(n)])
            nstack += n
            regs_closed = regs_closed or arch.pair_overflow == "stack-no-backfill"
    return out


def assign(arch, params, values) -> tuple[list[int], list[int]]:
    """Place argument values into (register words, stack words)."""
    if len(values) != len(params):
        raise UsageError(f"expected {len(params)} arguments, got {len(values)}")
    regs: list[int] = []
    stack: list[int] = []
    for ctype, value, where in zip(params, values, word_locations(arch, params)):
        if ctype.kind == "struct":
            words = struct_words(arch, ctype, value)
        else:
            words = [to_word(arch, ctype, value)]
        for (kind, _), word in zip(where, words):
            (regs if kind == "reg" else stack).append(word)
    return regs, stack


def from_ret(ctype, word: int, word2: int = 0):
    """The C value of a return register image."""
    if ctype is None or ctype.kind == "void":
        return None
    if ctype.kind == "struct":
        return (word, word2) if ctype.size > 8 else (word,)
    if ctype.kind == "ptr":
        return word & MASK64
    bits = ctype.size * 8
    return sext(word, bits) if ctype.signed else word & ((1 << bits) - 1)
