"""Byte order is the port's (ArchInfo.byteorder): memory and the calling convention follow it,
so a big-endian port needs no change outside its arch/<name>/ directory."""
import dataclasses
import re
from pathlib import Path

import pytest

import tramplab
from tramplab import Kernel
from tramplab.arch import get_arch
from tramplab.errors import UsageError
from tramplab.machine.callconv import assign
from tramplab.machine.memory import Memory
from tramplab.targets.loader import CType

ARCHES = ["x86_64", "arm64", "riscv64"]
BASE = 0x10000


def _memory(byteorder: str) -> Memory:
    mem = Memory(None, byteorder=byteorder)
    mem.add_region("data", BASE, 0x1000, "data", False)
    return mem


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_u64_and_u32_round_trip_in_either_order(byteorder):
    mem = _memory(byteorder)
    mem.write_u64(BASE, 0x0102030405060708)
    mem.write_u32(BASE + 8, 0x0A0B0C0D)
    assert mem.read_u64(BASE) == 0x0102030405060708
    assert mem.read_u32(BASE + 8) == 0x0A0B0C0D
    mem.write_u64(BASE, -1)                        # stores keep the low bits, as C would
    assert mem.read_u64(BASE) == 2**64 - 1


def test_big_endian_memory_puts_the_most_significant_byte_first():
    mem = _memory("big")
    mem.write_u64(BASE, 0x0102030405060708)
    mem.write_u32(BASE + 8, 0x0A0B0C0D)
    assert mem.read(BASE, 12) == bytes.fromhex("0102030405060708 0A0B0C0D")
    assert mem.read_u32(BASE) == 0x01020304        # the first half of the u64
    assert mem.word(bytes.fromhex("0102")) == 0x0102
    assert mem.word_bytes(-2, 4, signed=True) == bytes.fromhex("FFFFFFFE")
    assert mem.word_bytes(0x0102, 2) == bytes.fromhex("0102")


def test_little_endian_memory_puts_the_least_significant_byte_first():
    mem = _memory("little")
    mem.write_u64(BASE, 0x0102030405060708)
    assert mem.read(BASE, 8) == bytes.fromhex("0807060504030201")
    assert mem.word(bytes.fromhex("0102")) == 0x0201
    assert mem.word_bytes(0x0102, 2) == bytes.fromhex("0201")


def test_memory_refuses_an_unknown_byte_order():
    with pytest.raises(UsageError, match="byteorder"):
        Memory(None, byteorder="middle")


@pytest.mark.parametrize("arch", ARCHES)
def test_struct_bytes_become_words_in_the_ports_byte_order(arch):
    info = get_arch(arch)
    big = dataclasses.replace(info, byteorder="big")
    s16 = CType("struct s", 16, False, "struct")
    data = bytes(range(1, 17))
    regs, _ = assign(big, [s16], [data])
    assert regs == [0x0102030405060708, 0x090A0B0C0D0E0F10]
    regs, _ = assign(info, [s16], [data])              # every built-in port is little-endian
    assert regs == [0x0807060504030201, 0x100F0E0D0C0B0A09]


def test_a_short_struct_pads_after_its_bytes_in_either_order():
    big = dataclasses.replace(get_arch("x86_64"), byteorder="big")
    s12 = CType("struct t", 12, False, "struct")
    regs, _ = assign(big, [s12], [bytes(range(1, 13))])
    assert regs == [0x0102030405060708, 0x090A0B0C00000000]


@pytest.mark.parametrize("arch", ARCHES)
def test_machine_memory_takes_the_ports_byte_order(arch):
    k = Kernel(arch)
    assert k.memory.byteorder == k.arch.byteorder == "little"


def test_s32_buffers_of_the_targets_suite_follow_the_byte_order():
    from types import SimpleNamespace

    from tramplab.selftests.targets import S32, _raw
    assert _raw(SimpleNamespace(memory=_memory("big")), S32(-2)) == bytes.fromhex("FFFFFFFE")
    assert _raw(SimpleNamespace(memory=_memory("little")), S32(3)) == bytes.fromhex("03000000")


# A conversion that names an order (or uses the host's) outside an arch's own directory.
_HARD_CODED = re.compile(r"""(from_bytes|to_bytes)\([^)]*["'](little|big)["']"""
                         r"""|["'][<>!][QqIiHhLl]+["']|\bsys\.byteorder\b|\bstruct\.\w+\(""")


def test_generic_code_names_no_byte_order():
    src = Path(tramplab.__file__).parent
    arch_dirs = {p for p in (src / "arch").iterdir() if p.is_dir()}
    found = []
    for path in sorted(src.rglob("*.py")):
        if any(d in path.parents for d in arch_dirs) or path == src / "machine" / "memory.py":
            continue                 # the ports' own code, and the one place that reads words
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _HARD_CODED.search(line):
                found.append(f"{path.relative_to(src)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
