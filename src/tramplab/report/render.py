"""HTML pages from recorded runs and the support matrix: Jinja templates (report/templates),
SVG drawn by report/svg.py.  One self-contained file per page: inline CSS and SVG, no script
from anywhere, so it opens from file:// with no network."""
from __future__ import annotations

import datetime

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from ..profiles import LATEST, kernel_ranges
from . import svg
from .trace import ArchRun


def _env() -> Environment:
    env = Environment(loader=PackageLoader(__package__, "templates"),
                      autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["hex"] = lambda v: f"{v:#x}"
    env.filters["sym"] = svg.short_symbol
    env.globals.update(value_text=svg.value_text, slot_offset=svg.slot_offset,
                       colours=svg.KIND_COLOURS)
    return env


def _ranges_text(p) -> str:
    ranges = kernel_ranges(p)
    if not ranges:
        return "no released kernel has exactly these switches (a configuration built on purpose)"
    return "; ".join(f"v{a} and later (the timelines end at {LATEST})" if b is None
                     else f"v{a} up to, not including, v{b}" for a, b in ranges)


def _arch_view(run: ArchRun) -> dict:
    p = run.profile
    return {
        "run": run, "path_svg": Markup(svg.path_svg(run)), "frame_svg": Markup(svg.frame_svg(run)),
        "switches": p.switches(), "ranges": _ranges_text(p),
        "total": sum(len(s.steps) for s in run.stages),
        "host": sum(len(s.host_calls) for s in run.stages),
    }


def report_html(runs: list[ArchRun], command: str) -> str:
    """The report page for one traced call on one or more arches."""
    return _env().get_template("report.html.j2").render(
        arches=[_arch_view(r) for r in runs], command=command, poison=f"{svg.POISON:#04x}",
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def support_html(matrix) -> str:
    """The support matrix page (report/support.py's Matrix)."""
    return _env().get_template("support.html.j2").render(
        m=matrix, generated=datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%d %H:%M UTC"))
