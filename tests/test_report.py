"""`tramplab report` and `tramplab support --html`: the recorded call (stages, frame values, live
ranges) checked against the run, the support matrix against the timelines, and both pages loaded
in a real browser (Debian's chromium driven by Playwright)."""
import os
import shutil

import pytest
from click.testing import CliRunner

from tramplab import Kernel
from tramplab.arch import arch_module, get_port
from tramplab.arch.frame import FrameSlots
from tramplab.cli import main
from tramplab.profiles import has, presets, kernel_ranges, version_key
from tramplab.report import support
from tramplab.report.svg import POISON_WORD
from tramplab.report.trace import record

ARCHES = ("x86_64", "arm64", "riscv64")
CHROMIUM = "/usr/bin/chromium"


# ------------------------------------------------------------------------------ the recording
@pytest.mark.parametrize("arch", ARCHES)
def test_every_port_gives_its_frame_as_slots(arch):
    jit = arch_module(arch, "trampoline")
    assert isinstance(jit, FrameSlots)


def _slot(run, kind, index=0):
    return [s for s in run.slots if s.slot.kind == kind][index]


@pytest.mark.parametrize("arch", ARCHES)
def test_fexit_frame_holds_this_calls_values(arch):
    run = record(Kernel(arch), ["fexit:bpf_fentry_test2"], (7, 8))
    assert run.result == 15
    assert [r.kind for r in run.runs] == ["fexit"]
    assert _slot(run, "retval").values == (15,)
    args = sorted((s for s in run.slots if s.slot.kind == "arg"), key=lambda s: s.address)
    assert [s.values[0] & 0xFFFFFFFF for s in args] == [7, 8]
    assert _slot(run, "nr_args").values == (2,)
    # ctx is argument slot 0: the slot at ctx offset 0 is the lowest argument
    assert args[0].slot.ctx_offset == 0 and args[0].address == run.runs[0].ctx


@pytest.mark.parametrize("arch", ARCHES)
def test_fentry_sees_the_return_slot_unwritten_and_fexit_sees_it_set(arch):
    run = record(Kernel(arch), ["fentry:bpf_fentry_test2", "fexit:bpf_fentry_test2"], (2, 3))
    order = [r.kind for r in run.runs]
    assert order == ["fentry", "fexit"]
    assert _slot(run, "retval").values == (POISON_WORD, 5)


@pytest.mark.parametrize("arch", ARCHES)
def test_stages_follow_the_call_path(arch):
    run = record(Kernel(arch), ["fexit:bpf_fentry_test2"], (2, 3))
    kinds = [s.kind for s in run.stages]
    assert kinds[0] == "site"
    seq = [k for k in kinds if k != "ftrace"]
    assert seq == ["site", "trampoline", "original", "trampoline", "program", "trampoline"]
    assert sum(len(s.steps) for s in run.stages) + sum(len(s.host_calls) for s in run.stages) \
        == run.steps
    im_addr, im_size, _ = run.image
    for stage in run.stages:
        inside = [im_addr <= st.pc < im_addr + im_size for st in stage.steps]
        assert all(inside) if stage.kind == "trampoline" else not any(inside)


@pytest.mark.parametrize("arch", ARCHES)
def test_live_ranges_are_measured_in_the_trampoline(arch):
    run = record(Kernel(arch), ["fexit:bpf_fentry_test2"], (2, 3))
    im_addr, im_size, _ = run.image
    order = {id(st): i for i, st in enumerate(st for s in run.stages for st in s.steps)}
    for s in (_slot(run, "retval"), _slot(run, "nr_args"), _slot(run, "arg")):
        assert s.written is not None and s.released is not None
        assert im_addr <= s.written.pc < im_addr + im_size
        assert order[id(s.written)] < order[id(s.released)]


def test_pointer_arguments_default_to_the_selftests_buffers():
    """bpf_modify_return_test(1, &b) with b = 2: the function stores b + 1 and returns 4; the
    fmod_ret program (returning 0) lets it run, fexit then sees 4."""
    run = record(Kernel("arm64"), ["fmod_ret:bpf_modify_return_test",
                                   "fexit:bpf_modify_return_test"])
    assert run.result == 4
    assert [r.kind for r in run.runs] == ["fmod_ret", "fexit"]
    assert _slot(run, "retval").values[1] == 4


def test_kernel_ranges_follow_the_timeline():
    assert kernel_ranges(presets("arm64")["v6.4"]) == [("6.4", "6.16")]
    # 7.2: the prog skip nops, A64_MOV as orr (tramplab oracle on Debian's 7.2.12)
    assert kernel_ranges(presets("arm64")["latest"]) == [("7.2", None)]
    assert kernel_ranges(presets("riscv64")["seed000-mismatch"]) == []


# ------------------------------------------------------------------------------ the matrix
def test_support_matrix_cells_come_from_the_timelines():
    m = support.matrix()
    assert list(m.versions) == sorted(m.versions, key=version_key)
    assert m.versions.index("6.2") < m.versions.index("6.16")
    for arch, features in m.rows.items():
        for v in m.versions:
            cell = features["multi-attach"][v]
            if cell.state != "na":
                assert (cell.state == "yes") == (has(arch, "tracing_multi", v)
                                                  and has(arch, "direct_calls", v))
            assert all(features[f][v].why for f in m.features)
    x86_far = m.rows["x86_64"]["far trampolines"]["7.2"]
    assert x86_far.state == "no" and "ERANGE" in x86_far.why
    assert m.rows["arm64"]["far trampolines"]["6.4"].state == "yes"
    assert m.rows["riscv64"]["fentry"]["5.5"].state == "na"


# ------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("args, message", [
    (["report", "--arch", "x86_64", "fexit:bpf_fentry_tst2"], "unknown function"),
    (["report", "--arch", "x86_64", "fexit"], "bad program"),
    (["report", "--arch", "x86_64", "fexit:bpf_fentry_test2", "fentry:bpf_fentry_test1"],
     "one traced call"),
    (["report", "--arch", "x86_64", "--call", "x", "fexit:bpf_fentry_test2"], "--call"),
    (["report", "--arch", "x86_64", "--call", "1", "fexit:bpf_fentry_test2"], "expected 2"),
    (["report", "--arch", "x86_64", "fexit:bpf_fentry_test2", "fexit:synth_0"],
     "one traced call"),
    (["report", "--arch", "x86_64", "-o", "/nonexistent/r.html", "fexit:bpf_fentry_test2"],
     "cannot write"),
    (["support"], "--arch and --kernel"),
    (["support", "--html", "--kernel", "6.6"], "leave out --kernel"),
])
def test_bad_input_is_a_usage_error(args, message):
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_a_kernel_refusal_is_its_errno(tmp_path):
    r = CliRunner().invoke(main, ["report", "--arch", "x86_64", "--profile", "v5.5", "--call",
                                  "1,2", "fmod_ret:bpf_modify_return_test",
                                  "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 1 and "EINVAL" in r.output
    assert not (tmp_path / "r.html").exists()


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    r = CliRunner().invoke(main, ["report", "--arch", "all", "fexit:bpf_fentry_test2",
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_report_page_is_small_and_self_contained(report_page):
    html = report_page.read_text()
    assert len(html.encode()) < 3 * 300_000             # well under 1 MB per arch
    for remote in ("http://", "https://", "<script src", "<link"):
        assert remote not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


# ------------------------------------------------------------------------------ in a browser
@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Playwright (never `playwright install`).  Missing: a failure
    under CI (.ci/run installs it), a skip on a developer's machine."""
    in_ci = os.environ.get("CI") == "true"
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package (pip install -e '.[test]')"
    if missing is None and not shutil.which(CHROMIUM):
        missing = f"{CHROMIUM} (apt-get install chromium)"
    if missing:
        if in_ci:
            pytest.fail(f"browser tests need {missing}; .ci/run installs both")
        pytest.skip(f"browser tests need {missing}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, path):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    return page, errors


def test_report_in_the_browser(browser, report_page, tmp_path):
    page, errors = _open(browser, report_page)
    for arch in ARCHES:
        path = page.locator(f".arch-path[data-arch={arch}]")
        kinds = path.locator("g.stage").evaluate_all("gs => gs.map(g => g.dataset.kind)")
        assert kinds[0] == "caller" and kinds[-1] == "parent"
        assert {"site", "trampoline", "program", "original"} <= set(kinds)
        # the count a box prints is its number of instruction lines
        for g in path.locator("g.stage[data-kind=trampoline]").all():
            n = int(g.get_attribute("data-insns").split()[0])
            assert g.locator("text.insn").count() == n
        frame = page.locator(f".arch-frame[data-arch={arch}]")
        assert frame.locator("g.slot[data-kind=retval] text.val").text_content() == "0x5"
        assert frame.locator("g.slot[data-kind=arg]").count() == 2
        assert page.locator(f"#summary tr[data-arch={arch}] td.result").inner_text() == "5"
        assert page.locator(f".arch-site[data-arch={arch}] table.site-state").count() >= 2
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    assert errors == []


def test_support_page_in_the_browser(browser, tmp_path):
    out = tmp_path / "support.html"
    r = CliRunner().invoke(main, ["support", "--html", "-o", str(out)])
    assert r.exit_code == 0, r.output
    page, errors = _open(browser, out)
    cell = page.locator("tr[data-arch=x86_64][data-feature=multi-attach] td[data-version='7.2']")
    assert cell.get_attribute("class") == "yes" and "x86_64 v7.2" in cell.get_attribute("title")
    colour = lambda sel: page.locator(sel).first.evaluate(   # noqa: E731
        "e => getComputedStyle(e).backgroundColor")
    assert colour("td.yes") != colour("td.no")
    titles = page.locator("table.matrix td[data-version]").evaluate_all(
        "ts => ts.map(t => t.title)")
    assert titles and all(titles)
    page.screenshot(path=str(tmp_path / "support.png"))
    assert errors == []
