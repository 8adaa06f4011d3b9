"""`tramplab oracle`: the model against real kernels booted under QEMU.

Offline tests use consoles recorded from Debian's 6.12.117+deb13 kernels (tests/oracle/, see
its README) and the configs of tests/configs/; the live test boots the three kernels (CI
installs QEMU and fetches them) and fails on any divergence."""
from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from tramplab.arch import get_arch, get_port
from tramplab.cli import main
from tramplab.oracle import compare, console, initramfs, shapes as S
from tramplab.oracle.run import through_ops
from tramplab.machine.disasm import disassemble

HERE = Path(__file__).parent
ARCHES = ("x86_64", "arm64", "riscv64")
# recorded consoles (tests/oracle/) -> the kernel's .config (tests/configs/)
RECORDED = {
    ("x86_64", "6.12.117"): "config.amd64_none_amd64.xz",
    ("arm64", "6.12.117"): "config.arm64_none_arm64.xz",
    ("riscv64", "6.12.117"): "config.riscv64_none_riscv64.xz",
    ("x86_64", "7.2.12"): "config-7.2.12-amd64.xz",
    ("arm64", "7.2.12"): "config-7.2.12-arm64.xz",
    ("riscv64", "7.2.13"): "config-7.2.13-riscv64.xz",
    # newer than the model's timelines: compared with `latest` (--model-version 7.2)
    ("x86_64", "7.3.4"): "config-7.3.4-amd64.xz",
    ("arm64", "7.3.4"): "config-7.3.4-arm64.xz",
}
MODEL_VERSION = {"7.3.4": "7.2"}


def recorded(arch: str, version: str) -> Path:
    return HERE / "oracle" / f"console-{arch}-{version}.txt.xz"


def parsed(arch: str, version: str = "6.12.117") -> console.GuestRun:
    return console.parse(lzma.decompress(recorded(arch, version).read_bytes()))


def _plain(arch: str, version: str, tmp_path: Path) -> Path:
    out = tmp_path / f"console-{arch}-{version}.txt"
    out.write_bytes(lzma.decompress(recorded(arch, version).read_bytes()))
    return out


# ---------------------------------------------------------------------------------------------
# what the real kernels did (recorded 2026-12-01, Debian's kernels under QEMU TCG, nokaslr)
# ---------------------------------------------------------------------------------------------
# (arch, version) -> trampoline bytes of: fentry, fexit, fentry+fexit, 38 programs (riscv's
# depend on its sv57 pointer values: those of this boot)
KERNEL_BYTES = {
    ("x86_64", "6.12.117"): (100, 160, 232, 2718),
    ("arm64", "6.12.117"): (136, 196, 264, 2556),
    ("riscv64", "6.12.117"): (134, 218, 316, 3448),     # programs interpreted (no JIT)
    ("x86_64", "7.2.12"): (105, 156, 233, 2758),       # a nop5 before each program
    ("arm64", "7.2.12"): (140, 196, 268, 2648),        # a nop before each program
    ("riscv64", "7.2.13"): (144, 228, 320, 3820),
}


@pytest.mark.parametrize("arch,version", KERNEL_BYTES)
def test_recorded_trampoline_sizes(arch, version):
    facts = get_port(arch).oracle
    run = parsed(arch, version)
    assert run.finished and not run.fatal
    by_name = {s.name: s for s in run.shapes}
    for name, size in zip(("fentry", "fexit", "fentry+fexit", "38 programs"),
                          KERNEL_BYTES[arch, version]):
        sr = by_name[name]
        func = sr.progs[0].target
        target = facts.site_target(*sr.sites[("attached", func)])
        if target not in sr.memory:                         # riscv 7.x: CALL_OPS
            target = through_ops(sr, func, "little")
        assert facts.code_length(sr.memory[target]) == size, name
        assert facts.site_target(*sr.sites[("before", func)]) is None
        assert facts.site_target(*sr.sites[("detached", func)]) is None


# (arch, version) -> how the kernel refused trampoline_count's 38th program, if it did
LINK_LIMITS = {("x86_64", "7.2.12"): "prog 36 attach: E2BIG",
               ("arm64", "7.2.12"): "prog 37 attach: E2BIG",
               ("x86_64", "7.3.4"): "prog 36 attach: E2BIG",
               ("arm64", "7.3.4"): "prog 37 attach: E2BIG"}


def test_riscv_paging_is_chosen_at_boot():
    """The same QEMU, both configs with PGTABLE_LEVELS=5: 6.12.117 booted sv57, 7.2.13 sv48
    (/proc/cpuinfo's mmu line, as the guest reports it); the model then runs in that mode."""
    assert parsed("riscv64").mmu == "sv57" and parsed("riscv64", "7.2.13").mmu == "sv48"
    facts = get_port("riscv64").oracle
    assert facts.paging("sv57", False, True) == "sv57"
    assert get_port("x86_64").oracle.paging(None, True, True) == "5-level"
    assert get_port("x86_64").oracle.paging(None, False, False) == "4-level"
    arm64 = get_port("arm64").oracle.paging
    assert (arm64(None, False, True), arm64(None, False, False), arm64(None, False, None)) == \
        ("VA_BITS=52", "VA_BITS=48", None)


def test_riscv_debian_interprets_by_default():
    """Debian riscv64 has BPF_JIT but not BPF_JIT_DEFAULT_ON: bpf_jit_enable is 0 and
    trampolines call the interpreter (with prog->insnsi in a1); x86-64 and arm64 JIT by default.
    The profiles from the configs say the same (Profile.bpf_jit)."""
    from tramplab.profiles import Profile
    assert parsed("riscv64").jit_default == parsed("riscv64", "7.2.13").jit_default == "0"
    assert parsed("x86_64").jit_default == parsed("arm64").jit_default == "1"
    for (arch, version), cfg in RECORDED.items():
        profile = Profile.from_kconfig(str(HERE / "configs" / cfg), version,
                                       MODEL_VERSION.get(version))
        assert profile.bpf_jit == (arch != "riscv64"), (arch, version)
    run = parsed("riscv64")
    calls = [t.text for t in compare.tokens("riscv64", *_fentry_image("riscv64", run),
                                            run.ksyms.get)]
    assert "call (ra), <__bpf_prog_run32>" in calls


def _no_nan(name: str):
    raise AssertionError(f"{name} in the JSON output")


def _fentry_image(arch: str, run) -> tuple[bytes, int]:
    facts = get_port(arch).oracle
    sr = run.shapes[0]
    func = sr.progs[0].target
    target = facts.site_target(*sr.sites[("attached", func)])
    if target not in sr.memory:                             # CALL_OPS: through the ops
        target = through_ops(sr, func, "little")
    page = sr.memory[target]
    return page[:facts.code_length(page)], target


@pytest.mark.parametrize("arch,version", RECORDED)
def test_recorded_console_matches_the_model(arch, version, tmp_path):
    """`oracle diff` on a recorded console: every shape the same instruction sequence and the
    same values (or the same refusal) as the model with the profile derived from that
    kernel's config."""
    res = CliRunner().invoke(main, ["oracle", "diff", "--arch", arch, "--console",
                                    str(_plain(arch, version, tmp_path)), "--config",
                                    str(HERE / "configs" / RECORDED[arch, version]),
                                    "--kernel", version, "--json"]
                           + (["--model-version", MODEL_VERSION[version]]
                              if version in MODEL_VERSION else []))
    assert res.exit_code == 0, res.output
    report = json.loads(res.output, parse_constant=_no_nan)[0]   # strict JSON: no NaN
    assert report["same"] and report["real_seconds"] is None       # nothing booted
    assert len(report["shapes"]) == len(S.SHAPES)
    for shape in report["shapes"]:
        assert shape["same_values"], shape["shape"]
        assert shape["same_sequence"] in (True, None), shape["shape"]
        # x86 compares the 4 bytes at the function before attaching (endbr64 or its seal)
        assert shape["same_site"] is (True if arch == "x86_64" else None), shape["shape"]
        if shape["shape"] == "38 programs":
            assert shape["kernel"]["refused"] == LINK_LIMITS.get((arch, version))


def _diff_saved(arch: str, name: str) -> tuple[console.GuestRun, dict]:
    """The parsed console tests/oracle/console-<arch>-<name>.txt.xz (a 6.12.117 boot) and
    `oracle diff --json` on it (which reads the .xz itself); the diff must find no
    divergence."""
    path = HERE / "oracle" / f"console-{arch}-{name}.txt.xz"
    res = CliRunner().invoke(main, ["oracle", "diff", "--arch", arch, "--console", str(path),
                                    "--config",
                                    str(HERE / "configs" / RECORDED[arch, "6.12.117"]),
                                    "--kernel", "6.12.117", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)[0]
    assert report["same"]
    return console.parse(lzma.decompress(path.read_bytes())), report


def test_a_5_level_boot_runs_the_model_in_5_level_paging():
    """Debian 6.12.117 (X86_5LEVEL=y) booted with QEMU's `-cpu max` (LA57: `oracle diff --cpu
    max`) runs 5-level paging; the model then does too, and every shape is the same, its
    pointers in the same areas (vmalloc at 0xffa0..., the linear map at 0xff11...)."""
    run, report = _diff_saved("x86_64", "6.12.117-la57")
    assert run.la57 and report["paging"] == {"kernel": "5-level", "model": "5-level"}
    fentry = compare.tokens("x86_64", bytes.fromhex(report["shapes"][0]["kernel"]["code"]),
                            0xFFFFFFFFC0000000, lambda a: None,
                            get_arch("x86_64").space("5-level").area_of)
    assert "movabs rdi, <vmalloc>" in [t.text for t in fentry]


@pytest.mark.parametrize("cpu, mode", [("a72", "VA_BITS=48"), ("max", "VA_BITS=52")])
def test_arm64_runs_the_model_in_the_va_size_the_kernel_booted_in(cpu, mode):
    """Debian's arm64 6.12.117 (ARM64_VA_BITS=52) under `oracle diff --cpu cortex-a72` (no
    LPA2) runs 48-bit VA, under QEMU's default `-cpu max` 52-bit: the guest sees whether user
    space reaches above 48 bits; the model follows, and every pointer is in the same area
    (the image struct in the linear map of either: 0xffff0000... / 0xfff00000...)."""
    run, report = _diff_saved("arm64", f"6.12.117-{cpu}")
    assert run.wide_va is (mode == "VA_BITS=52")
    assert report["paging"] == {"kernel": mode, "model": mode}


def test_oracle_run_lists_the_kernels_code_with_its_symbols(tmp_path):
    res = CliRunner().invoke(main, ["oracle", "run", "--arch", "x86_64", "--console",
                                    str(_plain("x86_64", "7.2.12", tmp_path)), "--config",
                                    str(HERE / "configs" / RECORDED["x86_64", "7.2.12"]),
                                    "--kernel", "7.2.12"])
    assert res.exit_code == 0, res.output
    assert "fentry: 105 bytes" in res.output and "a saved run" in res.output
    assert "; call <__bpf_prog_enter_recur>" in res.output and "; call <prog 0>" in res.output
    assert "38 programs: refused with prog 36 attach: E2BIG" in res.output


def test_a_changed_instruction_is_a_divergence():
    """The comparison can fail: one register changed in the kernel's image is reported."""
    run = parsed("x86_64")
    sr = run.shapes[0]
    facts = get_port("x86_64").oracle
    target = facts.site_target(*sr.sites[("attached", sr.progs[0].target)])
    code = sr.memory[target][:facts.code_length(sr.memory[target])]
    names = run.ksyms.get
    kernel = compare.tokens("x86_64", code, target, names)
    bad = code.replace(bytes.fromhex("4889e5"), bytes.fromhex("4889e3"), 1)   # mov rbx, rsp
    diff = compare.compare(kernel, compare.tokens("x86_64", bad, target, names), code, bad)
    assert not diff.same and diff.first == 1
    assert compare.compare(kernel, kernel, code, code).same


def test_a_pointer_into_another_area_is_a_divergence():
    """Pointers are compared by the kernel area they point into: the riscv 6.12.117 fentry
    image loads a struct bpf_prog (vmalloc, sv57) and is the same as itself; the same code
    read as if that struct were kmalloc'd (the model before it vmalloc'd them) diverges at the
    first load."""
    run = parsed("riscv64")
    sr = run.shapes[0]
    facts = get_port("riscv64").oracle
    target = facts.site_target(*sr.sites[("attached", sr.progs[0].target)])
    code = sr.memory[target][:facts.code_length(sr.memory[target])]
    space = get_arch("riscv64").space("sv57")
    kernel = compare.tokens("riscv64", code, target, run.ksyms.get, space.area_of)
    loads = [t.text for t in kernel if "<vmalloc>" in t.text]
    assert loads and loads[0] == "li a0, <vmalloc>"
    as_heap = compare.tokens("riscv64", code, target, run.ksyms.get,
                             lambda a: "linear map" if space.area_of(a) == "vmalloc" else
                             space.area_of(a))
    diff = compare.compare(kernel, as_heap, code, code)
    assert not diff.same and "<linear map>" in diff.model_at[2][0]
    assert compare.compare(kernel, kernel, code, code).same


# ---------------------------------------------------------------------------------------------
# folding pointer loads: the value each arch's sequence builds
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,code,fold", [
    # mov x0, #0x12340000; movk x0, #0x5678
    ("arm64", "8046a2d200cf8af2", (2, "li x0", 0x12345678)),
    # the riscv64 kernel's p->insnsi (sv57): c.li a1, -7; c.slli a1, 0x29; addi a1, a1, 0x6d;
    # c.slli a1, 0xc; addi a1, a1, 0x48 (recorded 6.12.117 image, JIT off)
    ("riscv64", "e555a6159385d506b20593858504", (5, "li a1", 0xFF2000000006D048)),
    # auipc t1, 0x81ce; jalr ra, t1, 0x1e0 at 0xffffffff78000030: __bpf_prog_enter_recur
    ("riscv64", "17e31c08e70003" "1e", None),
])
def test_fold_builds_the_value(arch, code, fold):
    facts = get_port(arch).oracle
    insns = disassemble(get_port(arch).info, bytes.fromhex(code), 0xFFFFFFFF78000030)
    got = facts.fold(insns, 0)
    if fold is None:
        assert got == (2, "call (ra)", 0xFFFFFFFF78000030 + (0x81CE << 12) + 0x1E0)
    else:
        assert got == fold


# ---------------------------------------------------------------------------------------------
# the guest's formats
# ---------------------------------------------------------------------------------------------
def test_console_reads_the_wide_va_field():
    body = b"@TL paging - 0 1"
    run = console.parse(body + b" *%08x\n" % zlib.crc32(body))
    assert (run.mmu, run.la57, run.wide_va) == (None, False, True)


def test_console_reads_the_paging_line():
    body = b"@TL paging sv48 0"
    run = console.parse(body + b" *%08x\n" % zlib.crc32(body))
    assert run.mmu == "sv48" and not run.la57


def test_console_refuses_a_torn_line():
    body = b"@TL run 0"
    good = body + b" *%08x\n" % zlib.crc32(body)
    assert console.lines(good) == [["run", "0"]]
    with pytest.raises(console.ConsoleError):
        console.lines(b"@TL run 0[  3.1] kernel message *%08x\n" % zlib.crc32(body))


def test_initramfs_is_newc():
    data = gzip.decompress(initramfs.build({"init": (b"\x7fELF", 0o755)}))
    names = []
    at = 0
    while True:
        assert data[at:at + 6] == b"070701"
        fields = [int(data[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[at + 110:at + 110 + namesize - 1].decode()
        names.append((name, fields[1]))
        at = (at + 110 + namesize + 3) & ~3
        at = (at + filesize + 3) & ~3
        if name == "TRAILER!!!":
            break
    assert names == [("proc", 0o040755), ("sys", 0o040755), ("init", 0o100755),
                     ("TRAILER!!!", 0)]


def test_shapes_file_layout():
    data = S.encode(S.SHAPES[:1], lambda p: 1, "little")
    magic, nshapes, nprefixes = struct.unpack_from("<III", data)
    assert (magic, nshapes, nprefixes) == (S.SHAPES_MAGIC, 1, len(S.NAMED_CALLS))
    code = S.recorder(1, False, 0)
    assert len(code) % 8 == 0 and code[-8] == 0x95          # ends with exit


# ---------------------------------------------------------------------------------------------
# live: the three Debian kernels booted now
# ---------------------------------------------------------------------------------------------
def _live_missing() -> str | None:
    for tool in ("qemu-system-x86_64", "qemu-system-aarch64", "qemu-system-riscv64",
                 "clang-19", "ld.lld-19", "apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            return tool
    return None


def test_live_oracle_diff_all_arches():
    missing = _live_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is missing: .ci/run installs it")
        pytest.skip(f"{missing} is not installed")
    res = CliRunner().invoke(main, ["oracle", "diff", "--arch", "all", "--kernel", "6.12",
                                    "--json"])
    assert res.exit_code in (0, 1), res.output
    reports = json.loads(res.output)
    assert [r["arch"] for r in reports] == list(ARCHES)
    for r in reports:
        bad = [s["shape"] for s in r["shapes"]
               if not (s["same_sequence"] and s["same_values"] and s["same_site"] is not False)]
        assert not bad, f"{r['arch']} {r['kernel']}: {bad}"


# What the x86 consoles show at each traced function before attaching (the window starts at
# addr - 16): endbr64 where the address is taken (bpf_fentry_test1, EXPORT_SYMBOL_GPL), the
# version's gen_endbr_poison() elsewhere -- the facts arch/x86_64/ibt.py models.
SEALED_SEEN = [
    ("6.12.117", "bpf_fentry_test1", "f30f1efa"), ("6.12.117", "bpf_fentry_test2", "660f1f00"),
    ("6.12.117", "bpf_fentry_test6", "660f1f00"),
    ("6.12.117", "bpf_modify_return_test", "660f1f00"),
    ("6.12.117", "bpf_modify_return_test2", "660f1f00"),
    ("7.2.12", "bpf_fentry_test1", "f30f1efa"), ("7.2.12", "bpf_fentry_test2", "0f1f40d6"),
    ("7.2.12", "bpf_fentry_test6", "0f1f40d6"),
    ("7.2.12", "bpf_modify_return_test", "0f1f40d6"),
    ("7.2.12", "bpf_modify_return_test2", "0f1f40d6"),
]


@pytest.mark.parametrize("version,func,want", SEALED_SEEN)
def test_the_x86_consoles_show_ibt_sealing(version, func, want):
    run = parsed("x86_64", version)
    seen = {w[16:20].hex() for sr in run.shapes for (when, f), (_, w) in sr.sites.items()
            if when == "before" and f == func}
    assert seen == {want}


def test_a_different_entry_is_a_divergence():
    """The site comparison can fail: a model that left endbr64 where the kernel sealed it (or
    wrote the other version's poison) is reported, and the arch's report is not the same."""
    from tramplab.oracle.run import ArchReport, Observed, diff
    real = [Observed("fentry", refused="EINVAL", entry=bytes.fromhex("0f1f40d6"))]
    for model_entry, want in (("0f1f40d6", True), ("f30f1efa", False), ("660f1f00", False)):
        model = [Observed("fentry", refused="EINVAL", entry=bytes.fromhex(model_entry))]
        (res,) = diff(real, model)
        assert res.values_same and res.site_same is want
        report = ArchReport("x86_64", None, "p", [res], float("nan"), 0.0, None, "-")
        assert report.same is want
    (res,) = diff([Observed("fentry", refused="EINVAL")], [Observed("fentry", refused="EINVAL")])
    assert res.site_same is None                     # an arch that compares no entry bytes


def _riscv_loads(code: bytes, addr: int) -> dict:
    """The first value each of `li a0` / `li a1` builds in a riscv image (the oracle's fold)."""
    insns = disassemble(get_arch("riscv64"), code, addr)
    facts = get_port("riscv64").oracle
    loads, i = {}, 0
    while i < len(insns):
        folded = facts.fold(insns, i)
        if folded and folded[1] in ("li a0", "li a1"):
            loads.setdefault(folded[1], folded[2])
        i += folded[0] if folded else 1
    return loads


@pytest.mark.parametrize("version, off", [("6.12.117", 0x48), ("7.2.13", 0x60)])
def test_interpreted_trampolines_pass_prog_insnsi_at_the_versions_offset(version, off):
    """offsetof(struct bpf_prog, insnsi), as Debian's riscv64 kernels (BPF interpreted) load
    it: the fentry image's `li a1` (prog->insnsi) minus its `li a0` (prog); the model's
    profile for that version does the same."""
    from tramplab import Kernel
    from tramplab.profiles import Profile
    real = _riscv_loads(*_fentry_image("riscv64", parsed("riscv64", version)))
    assert real["li a1"] - real["li a0"] == off
    cfg = HERE / "configs" / RECORDED["riscv64", version]
    k = Kernel("riscv64", profile=Profile.from_kconfig(str(cfg), version))
    k.fentry("bpf_fentry_test1", name="pi")(lambda ctx: 0)
    image = k.bpf.trampoline_of("bpf_fentry_test1").cur_image
    model = _riscv_loads(bytes(image.code), image.addr)
    assert model["li a1"] - model["li a0"] == off
