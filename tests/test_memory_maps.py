"""Paging modes: each arch's address spaces (ArchInfo.spaces), as the kernel lays them out.

Rows are (arch, mode, area, start, end) from the kernel's documentation of its memory map
(x86: Documentation/arch/x86/x86_64/mm.rst; arm64: Documentation/arch/arm64/memory.rst;
riscv: Documentation/arch/riscv/vm-layout.rst) and, where marked, from Debian's kernels under
QEMU (tramplab oracle, tests/oracle/)."""
from __future__ import annotations

import pytest

from tramplab import Kernel, UsageError
from tramplab.arch import get_arch, port_names
from tramplab.check.stress import ERAS, run_schedule
from tramplab.profiles import get_profile

AREAS = [
    ("x86_64", "4-level", "linear map", 0xFFFF888000000000, 0xFFFFC88000000000),
    ("x86_64", "4-level", "vmalloc", 0xFFFFC90000000000, 0xFFFFE90000000000),
    ("x86_64", "5-level", "linear map", 0xFF11000000000000, 0xFF91000000000000),
    ("x86_64", "5-level", "vmalloc", 0xFFA0000000000000, 0xFFD2000000000000),
    ("arm64", "VA_BITS=48", "linear map", 0xFFFF000000000000, 0xFFFF800000000000),
    ("arm64", "VA_BITS=52", "linear map", 0xFFF0000000000000, 0xFFFF800000000000),
    ("arm64", "VA_BITS=52", "modules", 0xFFFF800000000000, 0xFFFF800080000000),
    ("riscv64", "sv39", "vmalloc", 0xFFFFFFC600000000, 0xFFFFFFD600000000),
    ("riscv64", "sv39", "linear map", 0xFFFFFFD600000000, 0xFFFFFFF600000000),
    ("riscv64", "sv48", "vmalloc", 0xFFFF8F8000000000, 0xFFFFAF8000000000),   # + 7.2.13
    ("riscv64", "sv48", "linear map", 0xFFFFAF8000000000, 0xFFFFEF8000000000),
    ("riscv64", "sv57", "vmalloc", 0xFF20000000000000, 0xFF60000000000000),   # + 6.12.117
    ("riscv64", "sv57", "linear map", 0xFF60000000000000, 0xFFDF000000000000),
    ("riscv64", "sv57", "modules", 0xFFFFFFFF00000000, 0xFFFFFFFF80000000),
]
# Pointers Debian's kernels loaded in their trampolines (tests/oracle/ consoles, nokaslr): the
# area each one is in, in the mode the kernel booted in.
MEASURED = [
    ("x86_64", "4-level", 0xFFFFC9000007D000, "vmalloc", "6.12.117: struct bpf_prog"),
    ("x86_64", "4-level", 0xFFFF888004F5E800, "linear map", "6.12.117: bpf_tramp_image"),
    ("x86_64", "4-level", 0xFFFFFFFFC0000780, "modules", "6.12.117: the trampoline"),
    ("x86_64", "5-level", 0xFFA000000007D000, "vmalloc", "6.12.117, -cpu max: struct bpf_prog"),
    ("x86_64", "5-level", 0xFF11000005218C00, "linear map", "6.12.117, -cpu max: the image struct"),
    ("arm64", "VA_BITS=52", 0xFFF0000003879C00, "linear map", "6.12.117: bpf_tramp_image"),
    ("arm64", "VA_BITS=52", 0xFFFF8000825AD000, "vmalloc", "6.12.117: struct bpf_prog"),
    ("arm64", "VA_BITS=48", 0xFFFF000004980800, "linear map",
     "6.12.117, -cpu cortex-a72: bpf_tramp_image"),
    ("riscv64", "sv57", 0xFF2000000006D000, "vmalloc", "6.12.117: struct bpf_prog"),
    ("riscv64", "sv57", 0xFF60000002CBB000, "linear map", "6.12.117: bpf_tramp_image"),
    ("riscv64", "sv57", 0xFFFFFFFF78000000, "modules", "6.12.117: the trampoline"),
    ("riscv64", "sv48", 0xFFFF8F800006D000, "vmalloc", "7.2.13: struct bpf_prog"),
    ("riscv64", "sv48", 0xFFFFFFFF78000000, "modules", "7.2.13: the trampoline"),
]
# The model's regions -> the kernel area each must lie in, in every mode
REGION_AREA = {"heap": "linear map", "vmalloc": "vmalloc", "stack:0": "vmalloc",
               "stack:1": "vmalloc"}
DEEPEST = {"x86_64": "5-level", "arm64": "VA_BITS=52", "riscv64": "sv57"}
LATEST_ERA = {"x86_64": "x86_64:latest", "arm64": "arm64:near", "riscv64": "riscv64:latest"}


@pytest.mark.parametrize("arch, mode, area, start, end", AREAS)
def test_the_areas_are_the_kernels(arch, mode, area, start, end):
    space = get_arch(arch).space(mode)
    assert (area, start, end) in space.areas
    assert space.kernel_space <= start


@pytest.mark.parametrize("arch, mode, addr, area, what", MEASURED)
def test_measured_kernel_pointers_fall_in_their_area(arch, mode, addr, area, what):
    assert get_arch(arch).space(mode).area_of(addr) == area, what


@pytest.mark.parametrize("arch", list(port_names()))
def test_every_mode_keeps_the_image_modules_and_bpf_area(arch):
    """A mode moves the linear map and vmalloc space only: the image, modules and the BPF area
    (and so every rel32/bl/auipc distance between them) are the same."""
    spaces = get_arch(arch).spaces
    for space in spaces[1:]:
        for field in ("kernel_text", "module_area", "bpf_area"):
            assert getattr(space.memory, field) == getattr(spaces[0].memory, field), field


@pytest.mark.parametrize("arch", list(port_names()))
def test_the_model_maps_each_region_in_its_kernel_area(arch):
    for space in get_arch(arch).spaces:
        k = Kernel(arch, profile=get_profile(arch, "latest").with_(paging=space.name), cpus=2)
        assert k.machine.space is space
        for name, area in REGION_AREA.items():
            region = k.memory.region(name)
            assert space.area_of(region.start) == area, (space.name, name)
            assert space.area_of(region.end - 1) == area, (space.name, name)
        assert space.area_of(k.machine.bpf.start) in ("modules", "vmalloc"), space.name


@pytest.mark.parametrize("arch", list(port_names()))
def test_selftests_pass_in_the_deepest_mode(arch):
    """Every selftest ends as in the default mode (the programs see the same values wherever
    the structs live); a struct bpf_prog is in vmalloc space, the image struct in the linear
    map, as the kernel allocates them."""
    from tramplab.selftests import run_bpf_test
    from tramplab.selftests.bpf_tests import TESTS
    base = get_profile(arch, "latest")
    p = base.with_(paging=DEEPEST[arch])
    passed = 0
    for test in TESTS:
        r, default = run_bpf_test(arch, p, test), run_bpf_test(arch, base, test)
        assert (r.status, r.detail) == (default.status, default.detail), test
        passed += r.status == "pass"
    assert passed >= len(TESTS) - 2
    k = Kernel(arch, profile=p)
    prog = k.fentry("bpf_fentry_test1", name="pm")(lambda ctx: 0)
    space = k.machine.space
    assert space.area_of(prog.mem) == "vmalloc"
    assert space.area_of(k.bpf.trampoline_of("bpf_fentry_test1").cur_image.im) == "linear map"


@pytest.mark.parametrize("arch", list(port_names()))
def test_attach_and_detach_interleaved_in_the_deepest_mode(arch):
    """Seeded schedules, CPUs interleaved at instruction granularity with attach/detach, in the
    mode with the longest pointers (replay: run_schedule(era, seed, calls=4, ops=6))."""
    era = ERAS[LATEST_ERA[arch]]
    from dataclasses import replace
    deep = replace(era, paging=DEEPEST[arch])
    for seed in range(4):
        r = run_schedule(deep, seed, calls=4, ops=6)
        assert r.ok, (arch, seed, r.violations)


def test_a_mode_the_arch_lacks_is_refused_before_anything_is_built():
    with pytest.raises(UsageError, match="x86_64 has no paging mode 'sv57'.*4-level, 5-level"):
        Kernel("x86_64", profile=get_profile("x86_64", "latest").with_(paging="sv57"))
    with pytest.raises(UsageError, match="the paging mode is the profile's"):
        Kernel("riscv64", paging="sv48")


def test_show_and_trace_run_in_the_paging_mode_given():
    """`show --paging sv57` loads struct bpf_prog in the form Debian's 6.12.117 did under sv57
    (`c.li a0, -7; c.slli a0, 0x29; addi; c.slli a0, 0xc`, tests/oracle/); the default map
    does not; a mode the arch lacks is refused."""
    from click.testing import CliRunner
    from tramplab.cli import main
    run = CliRunner().invoke
    cmd = ["show", "--arch", "riscv64", "--profile", "v6.12", "trampoline",
           "fentry:bpf_fentry_test1"]
    deep, default = run(main, cmd + ["--paging", "sv57"]), run(main, cmd)
    assert deep.exit_code == default.exit_code == 0, deep.output
    assert "c.slli a0, 0x29" in deep.output and "c.slli a0, 0x29" not in default.output
    res = run(main, ["trace", "--arch", "x86_64", "--paging", "5-level",
                     "fexit:bpf_fentry_test2", "--call", "2,3"])
    assert res.exit_code == 0 and "returned 5" in res.output, res.output
    res = run(main, cmd + ["--paging", "5-level"])
    assert res.exit_code == 2 and "riscv64 has no paging mode '5-level'" in res.output
