"""The selftest matrix: suites x arches (x layouts/profiles), each result pass/fail/unsupported.

Suites are the kernel's trampoline selftests (added with the BPF trampoline work) plus the
ground-floor suite "targets" (the compiled kernel functions return their expected values on every
patch-site layout).  `tramplab selftest` prints the matrix; `--json` gives these records.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import Oops


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
    from ..targets import LAYOUTS
    from . import targets
    out = []
    for layout in LAYOUTS[arch]:
        try:
            failures = targets.run(lambda cpus: Kernel(arch, layout=layout, cpus=cpus))
        except Oops as e:
            failures = [e.report]
        out.append(Result(arch, f"layout:{layout}", "targets", "fail" if failures else "pass",
                          "; ".join(failures)))
    return out


def run_matrix(arches: list[str]) -> list[Result]:
    results: list[Result] = []
    for arch in arches:
        results += _targets_results(arch)
    return results
