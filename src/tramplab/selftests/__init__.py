"""The selftest matrix: suites x arches (x layouts/profiles), each result pass/fail/unsupported.

Suites are the kernel's trampoline selftests (added with the BPF trampoline work) plus the
ground-floor suite "targets" (the compiled kernel functions return their expected values on every
patch-site layout).  `tramplab selftest` prints the matrix; `--json` gives these records.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import KernelError, Oops


@dataclass
class Result:
    arch: str
    profile: str
    test: str
    status: str          # pass | fail | unsupported
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _targets_results(arch: str) -> list[Result]:
    from ..kernel import Kernel
    from ..targets import layouts_of
    from . import targets
    out = []
    for layout in layouts_of(arch):
        try:
            failures = targets.run(lambda cpus: Kernel(arch, layout=layout, cpus=cpus))
        except Oops as e:
            failures = [e.report]
        out.append(Result(arch, f"layout:{layout}", "targets", "fail" if failures else "pass",
                          "; ".join(failures)))
    return out


def profiles_for(arch: str, which) -> list:
    """'latest', 'all' (every preset except the deliberate bug profiles), one name, or a
    Profile object (e.g. one derived from a kernel's .config)."""
    from ..profiles import Profile, get_profile, presets
    if isinstance(which, Profile):
        return [which]
    if which == "all":
        return [n for n, p in presets(arch).items() if not p.bug]
    get_profile(arch, which)
    return [which]


def run_bpf_test(arch: str, profile, name: str) -> Result:
    """One test on a kernel built with `profile` (a name, or a Profile: recorded by its name)."""
    from ..kernel import Kernel
    from .bpf_tests import TESTS, UNSUPPORTED_ERRNOS, Failed
    built_with = profile
    profile = getattr(profile, "name", profile)
    try:
        k = Kernel(arch, profile=built_with)
        TESTS[name](k)
    except Failed as e:
        return Result(arch, profile, name, "fail", str(e))
    except KernelError as e:
        if e.name in UNSUPPORTED_ERRNOS or e.feature:
            return Result(arch, profile, name, "unsupported", f"{e.name}: {e.rule}")
        return Result(arch, profile, name, "fail", f"{e.name}: {e.rule}")
    except Oops as e:
        return Result(arch, profile, name, "fail", e.report)
    except ModuleNotFoundError as e:
        return Result(arch, profile, name, "fail", f"not implemented for {arch} yet ({e.name})")
    return Result(arch, profile, name, "pass")


def run_matrix(arches: list[str], profile="latest", tests: list[str] | None = None,
               with_targets: bool = True, progress=None) -> list[Result]:
    """Every test on every arch and profile; `progress(done, total)` after each step (the
    targets check of an arch counts as one)."""
    from .bpf_tests import TESTS
    plan = [(arch, profiles_for(arch, profile)) for arch in arches]
    total = sum(len(profs) * len(tests or TESTS) + bool(with_targets) for _, profs in plan)
    results: list[Result] = []
    done = 0
    for arch, profs in plan:
        if with_targets:
            results += _targets_results(arch)
            done += 1
            if progress:
                progress(done, total)
        for prof in profs:
            for name in tests or TESTS:
                results.append(run_bpf_test(arch, prof, name))
                done += 1
                if progress:
                    progress(done, total)
    return results
