"""The `tramplab` command.

Exit codes: 0 success; 1 the model ran and something failed (an oops, a failing selftest);
2 bad usage (unknown arch, layout or function, wrong argument count or value).
"""
from __future__ import annotations

import contextlib
import json
import re
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .arch import arch_module, get_arch, port_names, ports
from .errors import KernelError, Oops, TramplabError, UsageError
from .profiles import LATEST, earliest

MAX_CPUS = 64           # = MachineConfig.MAX_CPUS (not imported: keeps startup free of Unicorn)
ARCH_HELP = (" | ".join(port_names()) + " (aliases: "
             + ", ".join(a for p in ports() for a in p.info.aliases[:1]) + ", ...)")
PAGING_HELP = ("with --from-config: the paging mode the kernel booted in ("
               + "; ".join(f"{p.name}: " + " | ".join(s.name for s in p.info.spaces)
                           for p in ports())
               + "); default: the largest the config allows")
# The kernels the timelines cover (profiles.check_version): before its first kernel with
# dynamic ftrace an arch has nothing to patch; after LATEST the timelines say nothing.
VERSIONS_HELP = (f"from the arch's first kernel with dynamic ftrace ("
                 + ", ".join(f"{a} {earliest(a)}" for a in port_names())
                 + f") to the latest, {LATEST}")


def _console() -> Console:
    # Piped output (CI logs, files) gets COLUMNS, or a wide page instead of rich's 80 columns.
    from .termtable import console_width
    return Console(highlight=False, width=console_width())


class _Group(click.Group):
    """Turn tramplab's own errors into the exit codes above instead of tracebacks."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as e:
            click.echo(f"tramplab: error: {e}", err=True)
            sys.exit(2)
        except Oops as e:
            click.echo(e.report, err=True)
            sys.exit(1)
        except KernelError as e:
            click.echo(f"tramplab: {e}", err=True)
            sys.exit(1)
        except TramplabError as e:
            from .ftrace.kconfig import ConfigError     # a profile Kconfig cannot build: usage
            click.echo(f"tramplab: error: {e}", err=True)
            sys.exit(2 if isinstance(e, ConfigError) else 1)


_NUMBER = re.compile(r"-[0-9].*")     # -5, -0x10, -1,2 (struct words): no option starts so


class _NumbersCommand(click.Command):
    """A command whose ARGS may be negative numbers: `tramplab call ... bpf_fentry_test2 -5 10`.
    click alone reads `-5` as an unknown option (and `-0xa` as `-a` with a value); here a token
    of '-' and a digit is always an argument, options stay options wherever they are."""

    def parse_args(self, ctx, args):
        takes_value = {name: not (p.is_flag or p.count)
                       for p in self.get_params(ctx) if isinstance(p, click.Option)
                       for name in (*p.opts, *p.secondary_opts)}
        options, arguments = [], []
        tokens = iter(args)
        for tok in tokens:
            if tok == "--":
                arguments += tokens
            elif _NUMBER.fullmatch(tok) or not tok.startswith("-") or tok == "-":
                arguments.append(tok)
            else:
                options.append(tok)                    # unknown ones: click's own error
                if takes_value.get(tok):               # its value, even "-1"
                    value = next(tokens, None)
                    if value is None:                  # missing: click's own error
                        return super().parse_args(ctx, args)
                    options.append(value)
        return super().parse_args(ctx, [*options, "--", *arguments])


def _arch(value: str) -> str:
    return get_arch(value).name


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tramplab")
def main():
    """tramplab: Linux ftrace, direct calls and BPF trampolines as real machine code on
    emulated x86-64, arm64 and riscv64 CPUs."""


def _kernel(arch: str, layout: str | None, cpus: int = 1):
    from .kernel import Kernel
    return Kernel(_arch(arch), layout=layout, cpus=cpus)


def _parse_arg(text: str, ctype):
    """A command-line argument in the parameter's C type: integers (decimal, 0x.., negative),
    pointers as addresses, 16-byte structs as comma-separated 64-bit words (e.g. 2,3)."""
    try:
        if ctype is not None and ctype.kind == "struct":
            return tuple(int(w, 0) for w in text.strip("{}").split(","))
        if len(text) == 3 and text[0] == text[2] == "'":
            return ord(text[1])
        return int(text, 0)
    except ValueError:
        kind = ctype.name if ctype is not None else "argument"
        raise UsageError(f"cannot read {text!r} as {kind}") from None


def _format_value(value, ctype) -> str:
    if value is None:
        return "(void)"
    if ctype is not None and ctype.kind == "ptr":
        return f"{value:#x}"
    if isinstance(value, tuple):
        return "{" + ", ".join(f"{w:#x}" for w in value) + "}"
    return str(value)


@main.command(cls=_NumbersCommand)
@click.option("--arch", "-a", required=True, help=ARCH_HELP)
@click.option("--layout", "-l", default=None, help="patch-site layout (see `tramplab layouts`)")
@click.option("--cpu", default=0, show_default=True, type=click.IntRange(0, MAX_CPUS - 1),
              help="CPU to run the call on")
@click.option("--cpus", default=None, type=click.IntRange(1, MAX_CPUS),
              help="CPUs in the machine (default: cpu+1)")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.argument("function")
@click.argument("args", nargs=-1)
def call(arch, layout, cpu, cpus, function, args, as_json):
    """Call FUNCTION with ARGS on an emulated CPU and print its return value.  ARGS are C
    values: integers (decimal, 0x.., negative: -5), 'c' for chars, structs as comma-separated
    64-bit words (2,3), each word within u64 or s64.

    Example: tramplab call --arch riscv64 bpf_fentry_test3 4 5 6   (prints 15)
    """
    if cpus is not None and cpu >= cpus:
        raise click.BadParameter(f"CPU {cpu} does not exist with --cpus {cpus} (CPUs are "
                                 f"0..{cpus - 1})", param_hint="'--cpu'")
    k = _kernel(arch, layout, cpus or cpu + 1)
    fn = k.function(function)
    params = fn.proto.params
    if len(args) != len(params):
        raise UsageError(f"{fn.signature} takes {len(params)} argument(s), got {len(args)}")
    values = [_parse_arg(a, p) for a, p in zip(args, params)]
    result = k.call(function, *values, cpu=cpu)
    if as_json:
        click.echo(json.dumps({"arch": k.arch.name, "function": function, "cpu": cpu,
                               "args": [list(v) if isinstance(v, tuple) else v for v in values],
                               "result": result}))
        return
    click.echo(_format_value(result, fn.proto.ret))


@main.command()
@click.option("--arch", "-a", required=True, help=ARCH_HELP)
@click.option("--layout", "-l", default=None, help="patch-site layout (see `tramplab layouts`)")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
def symbols(arch, layout, as_json):
    """List the kernel functions with their address, prototype and patch-site layout."""
    from .termtable import print_table
    k = _kernel(arch, layout)
    if as_json:
        click.echo(json.dumps([{"name": fn.name, "address": fn.addr, "size": fn.size,
                                "prototype": fn.signature,
                                "sites": [{"offset": s.offset, "nops": s.nops,
                                           "nop_size": s.nop_size,
                                           "before_symbol": s.nops_before_symbol}
                                          for s in fn.sites]}
                               for fn in sorted(k.functions.values(), key=lambda f: f.addr)],
                              indent=1))
        return
    rows = []
    for fn in sorted(k.functions.values(), key=lambda f: f.addr):
        site = ", ".join(f"func{s.offset:+d}: {s.nops} x {s.nop_size}-byte nop"
                         + (f" ({s.nops_before_symbol} before the symbol)"
                            if s.nops_before_symbol else "")
                         for s in fn.sites) or "none"
        rows.append([f"{fn.addr:#x}", str(fn.size), escape(fn.signature), escape(site)])
    print_table(_console(), f"{k.arch.name} kernel functions, layout {k.layout_name}: "
                f"{k.layout.description}", ["address", "size", "prototype (DWARF)",
                                            "patchable entry (ftrace record)"], rows)


@main.command()
@click.option("--arch", "-a", required=True, help=ARCH_HELP)
@click.option("--layout", "-l", default=None, help="patch-site layout (see `tramplab layouts`)")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.argument("function")
def disasm(arch, layout, function, as_json):
    """Annotated disassembly of FUNCTION, including the nops the compiler put before it."""
    from .machine.disasm import disassemble
    k = _kernel(arch, layout)
    fn = k.function(function)
    start = min([fn.addr] + [s.addr for s in fn.sites])
    code = k.memory.read(start, fn.addr + fn.size - start)
    site_addrs = {s.addr for s in fn.sites}
    if as_json:
        click.echo(json.dumps({"function": fn.name, "prototype": fn.signature,
                               "arch": k.arch.name, "layout": k.layout_name,
                               "insns": [{"addr": i.addr, "offset": i.addr - fn.addr,
                                          "bytes": i.raw.hex(), "insn": i.text,
                                          "site": i.addr in site_addrs}
                                         for i in disassemble(k.arch, code, start)]}, indent=1))
        return
    click.echo(f"{fn.signature}   [{k.arch.name}, layout {k.layout_name}]")
    for insn in disassemble(k.arch, code, start):
        notes = []
        if insn.addr in site_addrs:
            notes.append("<- patchable entry recorded here (ftrace record)")
        if insn.addr == fn.addr:
            notes.append(f"<- {fn.name}")
        elif insn.addr < fn.addr:
            notes.append("(before the symbol)")
        note = "   ; " + " ".join(notes) if notes else ""
        click.echo(f"  {insn.addr:#018x} <+{insn.addr - fn.addr:>4}>  {insn.raw.hex():<10} "
                   f"{insn.text}{note}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
def layouts(as_json):
    """List the patch-site layouts (one compiled object each) per arch.  The default (*) is
    the layout of the latest profile, which a Kernel without --profile/--layout is built with."""
    from .profiles import get_profile
    from .targets import layouts_of
    from .termtable import print_table
    found = [(arch, name, name == get_profile(arch, "latest").layout, lay)
             for arch in port_names() for name, lay in layouts_of(arch).items()]
    if as_json:
        click.echo(json.dumps([{"arch": a, "layout": n, "default": d, "kernels": lay.kernels,
                                "description": lay.description} for a, n, d, lay in found],
                              indent=1))
        return
    rows = [[a, n, "*" if d else "", escape(lay.kernels), escape(lay.description)]
            for a, n, d, lay in found]
    print_table(_console(), "patch-site layouts",
                ["arch", "layout", "default", "kernel", "description"], rows, keep=2)


@main.command()
@click.option("--arch", "-a", default="all", show_default=True, help=ARCH_HELP + " | all")
@click.option("--profile", "-p", default="latest", show_default=True,
              help="profile preset, 'all' (every preset but the seed-bug ones), or vX.Y[.Z] "
                   f"({VERSIONS_HELP})")
@click.option("--test", "-t", "tests", multiple=True, help="run only these tests (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list of results")
@click.option("--kernel-progs", is_flag=True,
              help="run the kernel's own selftest BPF objects (compiled from the "
                   "linux-source-6.12 package with clang, cached) on the eBPF interpreter, "
                   "checked with the prog_tests assertions")
@click.option("--jit", is_flag=True,
              help="with --kernel-progs: run the programs as machine code from the arch's "
                   "eBPF JIT instead of the interpreter (n/a for a port without one)")
@click.option("--from-config", "config", default=None, metavar="FILE",
              help="run on the profile derived from this kernel .config (see `tramplab "
                   "profiles --from-config`); its arch is the config's")
@click.option("--kernel", "-k", "version", default=None,
              help="with --from-config: the kernel version (default: the config's header)")
@click.option("--paging", default=None, metavar="MODE",
              help=PAGING_HELP)
def selftest(arch, profile, tests, as_json, kernel_progs, jit, config, version, paging):
    """Run the kernel's BPF trampoline selftests (and the compiled-targets check) on every arch;
    exit 1 on any failure.  'n/a' = the kernel of that profile lacks the feature (its errno is
    in --json's detail).  With --kernel-progs: the kernel's compiled BPF programs instead of
    the Python transcriptions."""
    from .selftests import run_matrix
    from .selftests.bpf_tests import TESTS
    if kernel_progs:
        from .bpfobj.checks import TABLE
        from .bpfobj.checks import run_matrix as run_kernel_progs
        known = TABLE
    else:
        known = TESTS
    for t in tests:
        if t not in known:
            raise UsageError(f"unknown test {t!r}; known: {', '.join(known)}")
    arches = list(port_names()) if arch == "all" else [_arch(arch)]
    if config is not None:
        from .kconfig_profile import from_kconfig
        if kernel_progs:
            raise UsageError("--from-config runs the Python selftests; not with --kernel-progs")
        if profile != "latest":
            raise UsageError("--from-config gives the profile: not with --profile")
        profile = from_kconfig(config, version, paging=paging).profile
        if arch != "all" and _arch(arch) != profile.arch:
            raise UsageError(f"{config} is the config of a {profile.arch} kernel, not "
                             f"{_arch(arch)}")
        arches = [profile.arch]
    elif version is not None or paging is not None:
        raise UsageError(f"{'--kernel' if version is not None else '--paging'} goes with "
                         f"--from-config (otherwise: --profile vX.Y)")
    if jit and not kernel_progs:
        raise UsageError("--jit runs the kernel's compiled programs: use it with --kernel-progs")
    with _progress_bar("selftests", as_json) as progress:
        if kernel_progs:
            results = run_kernel_progs(arches, profile, list(tests) or None,
                                       "jit" if jit else "interp")
        else:
            results = run_matrix(arches, profile, list(tests) or None, with_targets=not tests,
                                 progress=progress)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        _print_matrix(results, arches)
    if any(r.status == "fail" for r in results):
        sys.exit(1)


@contextlib.contextmanager
def _progress_bar(what: str, quiet: bool = False):
    """A rich progress bar on stderr for a long command, fed by progress(done, total); shown
    only on a terminal (logs and pipes get the results alone) and never with --json."""
    from rich.progress import Progress
    with Progress(transient=True, disable=quiet or not sys.stderr.isatty(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _print_matrix(results, arches) -> None:
    style = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "unsupported": "[yellow]n/a[/]"}
    con = _console()
    profiles = list(dict.fromkeys(r.profile for r in results if not r.profile.startswith("layout:")))
    tests = list(dict.fromkeys(r.test for r in results))
    from .termtable import print_table
    if len(profiles) <= 1:
        print_table(con, f"tramplab selftest ({profiles[0] if profiles else ''})",
                    ["test", *arches],
                    [[test, *(" ".join(style[r.status] for r in results
                                       if r.test == test and r.arch == a) or "-" for a in arches)]
                     for test in tests])
    else:
        for a in arches:
            profs = _in_version_order(a, [p for p in profiles
                                          if any(r.arch == a and r.profile == p for r in results)])
            rows = []
            for test in tests:
                row = [test]
                for p in profs:
                    cell = [r for r in results if r.arch == a and r.test == test and
                            (r.profile == p or (test == "targets" and p == profs[0]))]
                    row.append(" ".join(style[r.status] for r in cell) or "-")
                rows.append(row)
            print_table(con, f"tramplab selftest: {a}", ["test", *profs], rows)
    for r in results:
        if r.status == "fail":
            con.print(f"[red]FAIL[/] {r.arch}/{r.profile} {r.test}: {r.detail}")


def _in_version_order(arch: str, names: list[str]) -> list[str]:
    """Profile names by their kernel version (v6.2 before v6.16), 'latest' last among equals."""
    from .profiles import get_profile, version_key
    return sorted(names, key=lambda n: (version_key(get_profile(arch, n).kernel),
                                        n == "latest", n))


def _profile_kernel(arch: str, profile: str | None, layout: str | None = None,
                    paging: str | None = None):
    """The kernel of a preset or version (default latest), in `paging` where given."""
    from .kernel import Kernel
    from .profiles import get_profile
    if paging is not None:
        a = _arch(arch)
        get_arch(a).space(paging)                 # a UsageError naming the arch's modes
        profile = get_profile(a, profile).with_(paging=paging)
    return Kernel(_arch(arch), profile=profile, layout=layout)


RUN_PAGING_HELP = ("the paging mode the kernel runs in, which places the heap and vmalloc "
                   "space and so the pointers a trampoline loads (per arch: "
                   + "; ".join(f"{p.name}: " + " | ".join(s.name for s in p.info.spaces)
                               for p in ports())
                   + "; default: the first)")


@main.command()
@click.option("--arch", "-a", default="all", show_default=True, help=ARCH_HELP + " | all")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.option("--from-config", "config", default=None, metavar="FILE",
              help="derive the profile of the kernel built with this .config (plain, .xz or "
                   ".gz, e.g. /boot/config-*) instead of listing the presets")
@click.option("--kernel", "-k", "version", default=None,
              help="with --from-config: the kernel version MAJOR.MINOR[.PATCH] (default: the "
                   "one in the config's header)")
@click.option("--paging", default=None, metavar="MODE",
              help=PAGING_HELP)
def profiles(arch, as_json, config, version, paging):
    """List the profile presets (kernel eras) per arch with their switches.  With
    --from-config: the profile a kernel's .config gives, each switch with where it came from
    (the config or the version's timeline), and what the model approximates."""
    from .profiles import presets, version_key
    from .termtable import print_table
    if config is not None:
        return _profile_from_config(arch, config, version, as_json, paging)
    if version is not None or paging is not None:
        raise UsageError(f"{'--kernel' if version is not None else '--paging'} goes with "
                         f"--from-config (the presets list every version)")
    arches = list(port_names()) if arch == "all" else [_arch(arch)]
    cols = ("layout", "site", "with_regs", "with_args", "call_ops", "direct_calls", "direct_api",
            "multi_flags", "jmp", "single_direct_ops", "preemption", "bpf_entry", "bpf_site_skip",
            "bpf_max_args", "tramp_links_max")
    con = _console()
    # in version order (v6.2 before v6.16), the specials after the release they modify
    tables = {a: sorted(presets(a).items(), key=lambda item: (version_key(item[1].kernel),
                                                              item[0] == "latest", item[0]))
              for a in arches}
    if as_json:
        click.echo(json.dumps({a: [{"name": n, "kernel": p.kernel, "bug": p.bug, "note": p.note,
                                    **p.switches()} for n, p in table]
                               for a, table in tables.items()}, indent=1))
        return
    for a, table in tables.items():
        rows = [[escape(name) + (" (bug)" if p.bug else "")]
                + [escape("y" if v is True else "-" if v is False else str(v))
                   for v in (getattr(p, c) for c in cols)] for name, p in table]
        print_table(con, f"{a} profiles", ["profile"] + [c.replace("_", " ") for c in cols],
                    rows)
        for name, p in table:
            if p.note:
                con.print(f"  {escape(name)}: {escape(p.note)}")


def _profile_from_config(arch: str, config: str, version: str | None, as_json: bool,
                         paging: str | None = None) -> None:
    from .kconfig_profile import from_kconfig
    from .termtable import print_table
    derived = from_kconfig(config, version, paging=paging)
    p = derived.profile
    if arch != "all" and _arch(arch) != p.arch:
        raise UsageError(f"{config} is the config of a {p.arch} kernel, not {_arch(arch)}")
    if as_json:
        click.echo(json.dumps(derived.as_dict(), indent=1))
        return
    con = _console()
    rows = [[escape(switch), escape("y" if v is True else "-" if v is False else str(v)),
             escape(derived.from_config.get(switch, "timeline"))]
            for switch, v in p.switches().items()]
    print_table(con, escape(f"{p.arch} v{p.kernel} from {config}"
                            + (f" (its header: {derived.config.version})"
                               if derived.config.version else "")),
                ["switch", "value", "from"], rows)
    con.print(f"layout: {escape(p.layout)}; profile name: {escape(p.name)}")
    if derived.approximated:
        con.print("approximated (the model does not represent these):")
        for line in derived.approximated:
            con.print(f"  - {escape(line)}")
    else:
        con.print("approximated: nothing")


@main.command()
@click.option("--arch", "-a", default=None, help=ARCH_HELP + " (with --html: | all, the default)")
@click.option("--kernel", "-k", "version", default=None,
              help=f"kernel version MAJOR.MINOR[.PATCH], e.g. 5.15; {VERSIONS_HELP}")
@click.option("--html", "as_html", is_flag=True,
              help="write the matrix arch x kernel version x feature as one HTML page")
@click.option("--output", "-o", default="support.html", show_default=True,
              help="with --html: the file to write")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
def support(arch, version, as_html, output, as_json):
    """What works on ARCH at kernel VERSION (fentry/fexit/fmod_ret, direct calls, multi ...)
    and, for what does not, why.  With --html: every arch and version as a coloured grid,
    the reason in each cell's tooltip."""
    if as_html:
        return _support_html(arch, version, output)
    if arch is None or version is None:
        raise UsageError("support needs --arch and --kernel (or --html for the whole matrix)")
    from .profiles import version_key
    from .show import support as rows
    from .termtable import print_table
    version_key(version)
    a = _arch(arch)
    if as_json:
        click.echo(json.dumps([{"capability": title, "works": ok, "why": why}
                               for title, ok, why in rows(a, version.lstrip("v"))], indent=1))
        return
    print_table(_console(), f"{a} Linux {version.lstrip('v')}", ["capability", "works", "why"],
                [[escape(title), "[green]yes[/]" if ok else "[red]no[/]", escape(why)]
                 for title, ok, why in rows(a, version.lstrip("v"))])


def _support_html(arch: str | None, version: str | None, output: str) -> None:
    from .report.render import support_html
    from .report.support import matrix
    if version is not None:
        raise UsageError("--html draws every kernel version; leave out --kernel")
    arches = list(port_names()) if arch in (None, "all") else [_arch(arch)]
    _write_page(output, support_html(matrix(arches)))


def _write_page(output: str, html: str) -> None:
    import pathlib
    path = pathlib.Path(output)
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write {output}: {e.strerror}") from None
    click.echo(f"wrote {output} ({len(html.encode()) // 1024} KiB); open it in a browser: "
               f"{path.resolve().as_uri()}")


@main.command(cls=_NumbersCommand)
@click.option("--arch", "-a", required=True, help=ARCH_HELP + " | all (side by side)")
@click.option("--profile", "-p", default=None,
              help="profile preset (default latest) or vX.Y[.Z] (see `tramplab selftest -h`)")
@click.option("--call", "call_args", default=None,
              help="comma-separated arguments (default: the selftests' values), e.g. 2,3")
@click.option("--output", "-o", default="report.html", show_default=True,
              help="the HTML file to write")
@click.argument("programs", nargs=-1, required=True)
def report(arch, profile, call_args, output, programs):
    """Run one traced call and write it as one self-contained HTML page: the call path with
    the instructions each stage ran, the trampoline's stack frame to scale with the values of
    this call, the patch site in each state, the profile's switches.

    Example: tramplab report --arch all fexit:bpf_fentry_test2 -o report.html
    """
    from .report.render import report_html
    from .report.trace import one_function, record
    one_function(list(programs))                  # bad specs: an error before any kernel
    args = None
    if call_args is not None:
        try:
            args = [int(a, 0) for a in call_args.split(",") if a.strip()]
        except ValueError:
            raise UsageError(f"--call wants comma-separated integers, not {call_args!r}") \
                from None
    arches = list(port_names()) if arch == "all" else [_arch(arch)]
    runs = []
    with _progress_bar("tracing the call") as progress:
        for a in arches:
            runs.append(record(_profile_kernel(a, profile), list(programs), args))
            progress(len(runs), len(arches))
    command = " ".join(["tramplab report --arch", arch, *(["--profile", profile] if profile else []),
                        *(["--call", call_args] if call_args is not None else []), *programs,
                        "-o", output])
    _write_page(output, report_html(runs, command))


@main.command()
@click.option("--arch", "-a", required=True, help=ARCH_HELP)
@click.option("--profile", "-p", default=None,
              help="profile preset (default latest) or vX.Y[.Z] (see `tramplab selftest -h`)")
@click.option("--layout", "-l", default=None,
              help="build the profile with this site layout (one its kernel era is built with; "
                   "what the layout fixes, e.g. x86 fentry-ibt's 9-byte skip, follows it); "
                   "without --profile: the newest preset using the layout")
@click.argument("what", type=click.Choice(["site", "trampoline"]))
@click.option("--paging", default=None, metavar="MODE", help=RUN_PAGING_HELP)
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.argument("items", nargs=-1, required=True)
def show(arch, profile, layout, what, paging, items, as_json):
    """Show a patch site in each state (`show site FUNC`) or a generated BPF trampoline with its
    stack layout (`show trampoline fexit:bpf_fentry_test1 [fentry:...]`)."""
    from . import show as views
    if what == "trampoline":
        funcs = list(dict.fromkeys(views.parse_prog_spec(spec)[1] for spec in items))
        if len(funcs) > 1:
            raise UsageError(f"one trampoline per function: {', '.join(funcs)} have one each; "
                             "show them one at a time")
    k = _profile_kernel(arch, profile, layout, paging)
    if as_json:
        click.echo(json.dumps(_show_json(k, what, list(items)), indent=1))
        return
    if what == "site":
        lines = []
        for func in items:
            lines += views.site_states(k, func) + [""]
    else:
        lines = views.trampoline_listing(k, list(items))
    click.echo("\n".join(lines))


def _show_json(k, what: str, items: list[str]) -> dict:
    """`show` as data: each site's states with their bytes, or the trampoline's code and frame
    (the frame slots of the spec its JIT was given, as the HTML report reads them)."""
    from . import show as views
    from .machine.disasm import disassemble
    if what == "site":
        out = {}
        for func in items:
            states, impossible = views.site_state_table(k, func)
            out[func] = {"states": [{"state": title, "pieces": [{"addr": a, "bytes": d.hex()}
                                                                for a, d in pieces]}
                                    for title, pieces in states], "impossible": impossible}
        return out
    from .report.trace import attached_frame
    im, slots, _ = attached_frame(k, items)
    return {"flags": im.flags.name or "0", "addr": im.addr, "size": len(im.code),
            "code": [{"addr": i.addr, "bytes": i.raw.hex(), "insn": i.text}
                     for i in disassemble(k.arch, im.code, im.addr)],
            "frame": [dict(base=s.base, offset=s.offset, ctx_offset=s.ctx_offset, kind=s.kind,
                           holds=s.holds, note=s.note, size=s.size) for s in slots]}


@main.command()
@click.option("--arch", "-a", required=True, help=ARCH_HELP)
@click.option("--profile", "-p", default=None,
              help="profile preset (default latest) or vX.Y[.Z] (see `tramplab selftest -h`)")
@click.option("--call", "call_args", default="", help="comma-separated arguments, e.g. 2,3")
@click.option("--function", "-f", default=None,
              help="function to call (default: the first program's target), e.g. a caller")
@click.option("--paging", default=None, metavar="MODE", help=RUN_PAGING_HELP)
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.argument("programs", nargs=-1)
def trace(arch, profile, call_args, function, paging, programs, as_json):
    """Run one call instruction by instruction and print its path with symbols: patch site,
    trampoline, programs, the original function, back to the caller.

    Example: tramplab trace --arch arm64 fexit:bpf_fentry_test2 --call 2,3
    """
    from . import show as views
    k = _profile_kernel(arch, profile, paging=paging)
    try:
        args = [int(a, 0) for a in call_args.split(",") if a.strip()]
    except ValueError:
        raise UsageError(f"--call wants comma-separated integers, not {call_args!r}") from None
    if as_json:
        target, path, result = views.call_path(k, list(programs), function, args)
        click.echo(json.dumps({"arch": k.arch.name, "profile": k.profile.name,
                               "function": target, "args": args, "result": result,
                               "path": [{"pc": pc, "symbol": k.symbol(pc), "bytes": i.raw.hex(),
                                         "insn": i.text} for pc, i in path]}, indent=1))
        return
    click.echo("\n".join(views.call_trace(k, list(programs), function, args)))


@main.command()
@click.option("--era", "-e", "eras", multiple=True,
              help="protocol era to stress (repeatable; default: all of them; see below)")
@click.option("--schedules", "-n", default=100, show_default=True, type=click.IntRange(1, 10**6),
              help="seeded schedules per era, each on a fresh kernel")
@click.option("--seed", "-s", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="first seed (a failing schedule replays alone: --seed S --schedules 1)")
@click.option("--calls", default=5, show_default=True, type=click.IntRange(1, 100),
              help="calls per CPU per schedule")
@click.option("--ops", default=8, show_default=True, type=click.IntRange(1, 100),
              help="attach/detach operations per schedule")
@click.option("--ifetch", default="coherent", show_default=True,
              type=click.Choice(["coherent", "weak"]),
              help="instruction fetch: weak = CPUs may run the text they fetched before a "
                   "patch until they synchronise, and a write lands in the arch's pieces")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
def stress(eras, schedules, seed, calls, ops, ifetch, as_json):
    """Run CPUs calling traced functions while programs and ftrace ops are attached and
    detached, interleaved instruction by instruction; check every call (no oops, right return
    value and arguments, a program attached for the whole call ran exactly once, one detached
    for the whole call never ran).  Exit 1 on any violation.

    Eras: each port names the protocols worth stressing, as <arch>:<era> (`tramplab stress -n 1`
    lists them and what each exercises).
    """
    import time
    from .check.stress import ERAS, stress as run
    for e in eras:
        if e not in ERAS:
            raise UsageError(f"unknown era {e!r}; known: {', '.join(ERAS)}")
    out, failed = [], False
    names = list(eras or ERAS)
    with _progress_bar("stress", as_json) as progress:
        for k, name in enumerate(names):
            start = time.perf_counter()
            report = run(ERAS[name].with_ifetch(ifetch), schedules, first_seed=seed,
                         calls=calls, ops=ops,
                         progress=lambda done, k=k: progress(k * schedules + done,
                                                             len(names) * schedules))
            secs = time.perf_counter() - start
            failed |= bool(report.failures)
            out.append((name, report, secs))
    if as_json:
        click.echo(json.dumps([{"era": n, "schedules": len(r.results), "steps": r.steps,
                                "seconds": round(t, 3),
                                "failures": [{"seed": f.seed, "violations": f.violations}
                                             for f in r.failures]} for n, r, t in out],
                              indent=1))
    else:
        from .termtable import print_table
        print_table(_console(), "stress", ["era", "what it exercises", "schedules", "failing",
                                          "steps", "seconds"],
                    [[name, escape(ERAS[name].note), str(len(report.results)),
                      str(len(report.failures)), str(report.steps), f"{secs:.1f}"]
                     for name, report, secs in out])
        for name, report, _ in out:
            for f in report.failures[:5]:
                weak = f" --ifetch {ifetch}" if ifetch != "coherent" else ""
                click.echo(f"{name} seed {f.seed}: {f.violations[0]}\n  replay: tramplab stress "
                           f"--era {name} --seed {f.seed} --schedules 1 --calls {calls} --ops {ops}"
                           f"{weak}")
    if failed:
        sys.exit(1)


@main.command(name="explore")
@click.option("--arch", "-a", default="all", show_default=True, help=ARCH_HELP + " | all")
@click.option("--target", "-t", "target_names", multiple=True,
              help="<arch>:<era>[+fault...] (repeatable; default: every era of --arch)")
@click.option("--fault", "-f", "faults", multiple=True,
              help="explore a known-bad protocol (see `tramplab explore --list-faults`)")
@click.option("--schedules", "-n", default=40, show_default=True, type=click.IntRange(0, 10**6),
              help="random schedules per target")
@click.option("--seed", "-s", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="first seed (with --replay: the seed to replay)")
@click.option("--cpus", default=2, show_default=True, type=click.IntRange(1, 4),
              help="CPUs making calls")
@click.option("--calls", default=3, show_default=True, type=click.IntRange(1, 50),
              help="calls per CPU")
@click.option("--ops", default=4, show_default=True, type=click.IntRange(1, 50),
              help="attach/detach operations per schedule")
@click.option("--actors", default=1, show_default=True, type=click.IntRange(1, 4),
              help="host actors attaching and detaching concurrently (each owns whole "
                   "functions; ftrace updates serialize on ftrace_lock, as in the kernel)")
@click.option("--bounded/--no-bounded", default=True, show_default=True,
              help="also every one-preemption schedule of a small case (1 CPU, 2 calls, 3 ops, "
                   "1 actor)")
@click.option("--stride", default=4, show_default=True, type=click.IntRange(1, 1000),
              help="bounded search: preempt at every STRIDE-th step")
@click.option("--replay", is_flag=True, help="replay --seed of one --target, shrink a violation "
                                             "and print its annotated instruction trace")
@click.option("--schedule", "schedule", default=None, metavar="RUNS",
              help="with --replay: this interleaving instead of the seed's (TASK.STEPS[*REPEAT],"
                   " comma separated, as a bounded finding's replay command prints it)")
@click.option("--workers", "-j", default=1, show_default=True, type=click.IntRange(1, 64),
              help="local worker processes")
@click.option("--ray", "ray_address", default=None,
              help="run on a Ray cluster (ADDRESS, or 'local'); needs tramplab[ray]")
@click.option("--ifetch", type=click.Choice(["coherent", "weak", "both"]), default="both",
              show_default=True, help="instruction fetch: coherent, weak (torn and stale text "
                                      "until the protocol synchronises), or both (every era "
                                      "on each machine)")
@click.option("--list-faults", is_flag=True, help="list the known-bad protocols and exit")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def explore_cmd(arch, target_names, faults, schedules, seed, cpus, calls, ops, actors, bounded,
                stride,
                replay, schedule, workers, ray_address, ifetch, list_faults, as_json):
    """Explore interleavings: CPUs call traced functions while another attaches, detaches and
    replaces programs and ftrace ops, one instruction at a time, over seeded random schedules
    and (--bounded) every one-preemption schedule of a small case.  Each call is checked (no
    oops, the right value, programs attached for the whole call ran exactly once, detached
    ones never, freed images never executed, stacks balanced).  A violation is printed with a
    replay command; --replay shrinks it and prints what each CPU ran.  Exit 1 on a violation.

    Known-bad protocols (--fault) show what the explorer finds; the kernel's own must stay clean.
    """
    from .check import explore as ex
    from .faults import known
    if list_faults:
        for a in port_names():
            for name, what in known(a).items():
                click.echo(f"{a:8} {name:22} {what}")
        return
    targets = [_explore_target(n, cpus, calls, ops, ifetch, actors) for n in target_names] or \
        ex.targets_for(None if arch == "all" else _arch(arch), faults, cpus, calls, ops, ifetch,
                       actors)
    if not targets:
        raise UsageError(f"no target on {arch} knows the fault(s) {', '.join(faults)}")
    if schedule is not None and not replay:
        raise UsageError("--schedule goes with --replay")
    if replay:
        if len(targets) != 1:
            raise UsageError("--replay needs exactly one --target")
        _explore_replay(ex, targets[0], seed,
                        ex.decode_script(schedule) if schedule is not None else None)
        return
    from rich.progress import Progress
    total = None
    with Progress(transient=True, disable=as_json or not sys.stderr.isatty(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("exploring", total=None)

        def progress(done, n):
            bar.update(task, completed=done, total=n)
        import time as _time
        start = _time.perf_counter()
        report = ex.explore(targets, schedules, first_seed=seed, bounded=bounded, stride=stride,
                            workers=workers, ray_address=ray_address, progress=progress)
        total = _time.perf_counter() - start
    if as_json:
        click.echo(json.dumps({"schedules": report.schedules, "steps": report.steps,
                               "seconds": round(total, 3),
                               "targets": [{"target": t.target.name, "schedules": t.schedules,
                                            "steps": t.steps, "calls": t.calls,
                                            "ops": t.ops, "bounded": t.bounded,
                                            "findings": [{"seed": f.seed, "how": f.how,
                                                          "violations": f.violations,
                                                          "replay": f.replay_command()}
                                                         for f in t.findings]}
                                           for t in report.targets]}, indent=1))
    else:
        from .termtable import print_table
        print_table(_console(), "explore", ["target", "what it exercises", "schedules (bounded)",
                                           "calls checked", "ops", "steps", "violations",
                                           "first"],
                    [[t.target.name, escape(t.target.era.note), f"{t.schedules} ({t.bounded})",
                      str(t.calls), str(t.ops), str(t.steps), str(len(t.findings)),
                      escape(t.findings[0].violations[0][:60] if t.findings else "")]
                     for t in report.targets])
        rate = report.steps / total if total else 0
        click.echo(f"{report.schedules} schedules, {report.steps} steps in {total:.1f} s "
                   f"({rate:,.0f} steps/s), {len(report.findings)} violation(s)")
        for f in report.findings[:10]:
            click.echo(f"{f.target.name} seed {f.seed} ({f.how}): {f.violations[0]}\n"
                       f"  replay: {f.replay_command()}")
    if report.findings:
        sys.exit(1)


def _explore_target(name: str, cpus: int, calls: int, ops: int, ifetch: str = "coherent",
                    actors: int = 1):
    from .check.explore import Target
    from .check.stress import ERAS
    name, _, mode = name.partition("@")
    era, *faults = name.split("+")
    if era not in ERAS or mode not in ("", "coherent", "weak"):
        raise UsageError(f"unknown target {name!r}: <era>[+fault...][@weak], an era one of "
                         f"{', '.join(ERAS)}")
    # a name without @ is the coherent machine (as Target.name prints it), unless --ifetch
    # names one machine
    default = "coherent" if ifetch == "both" else ifetch
    return Target(ERAS[era].with_faults(*faults).with_ifetch(mode or default), cpus, calls, ops,
                  actors)


def _explore_replay(ex, target, seed: int, script=None) -> None:
    r = target.run(seed, script)
    if not r.violations:
        click.echo(f"{target.name} seed {seed}: no violation ({r.steps} steps)")
        return
    finding = ex.Finding(target, seed, list(r.violations), list(r.trace))
    script = ex.shrink(finding)
    click.echo(f"{target.name} seed {seed}: {r.violations[0]}")
    click.echo(f"schedule: {len(finding.trace)} steps in {len(ex.runs_of(finding.trace))} runs; "
               f"shrunk to {len(script)} steps in {len(ex.runs_of(script))} runs")
    click.echo("\n".join(ex.annotate(finding)))
    sys.exit(1)


@main.command(name="attach")
@click.option("--arch", "-a", required=True, help=ARCH_HELP)
@click.option("--profile", "-p", default=None,
              help="profile preset (default latest) or vX.Y[.Z] (see `tramplab selftest -h`)")
@click.option("--synth", "-n", default=0, show_default=True, type=click.IntRange(0, 200_000),
              help="load this many synthetic functions first (synth_00000, synth_00001, ...: "
                   "0-12 arguments of varied types, results known)")
@click.option("--no-calls", is_flag=True, help="attach and detach only; call nothing")
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
@click.option("--object", "-o", "obj", default=None, metavar="PROG.bpf.o",
              help="instead of SPEC: a clang-built BPF object (-target bpf); attach every "
                   "fentry/fexit/fmod_ret program in it, call each target once and print the "
                   "object's globals")
@click.option("--jit", is_flag=True,
              help="with --object: run the programs as the arch eBPF JIT's machine code "
                   "(default: the eBPF interpreter)")
@click.argument("spec", required=False)
def attach_cmd(arch, profile, synth, no_calls, as_json, obj, jit, spec):
    """Attach one counting program to every function SPEC matches with the tracing_multi link,
    call each of them once, report how many runs the program saw and what attaching and
    detaching cost (ftrace updates, text pokes, sync points, synchronize_rcu calls, time).

    SPEC is KIND:PATTERN, KIND one of fentry, fexit, fmod_ret, e.g. 'fexit:synth_*' or
    'fentry:bpf_fentry_test*'.

    With --object PROG.bpf.o instead of SPEC: the programs of a user's BPF object, each
    target called once with zero arguments (a pointer argument: a zeroed buffer).

    Example: tramplab attach --arch x86_64 --synth 10000 'fexit:synth_*'

    Example: tramplab attach --arch arm64 --object prog.bpf.o --jit
    """
    import time
    if (obj is None) == (spec is None):
        raise UsageError("give either SPEC (KIND:PATTERN) or --object PROG.bpf.o")
    if jit and obj is None:
        raise UsageError("--jit runs the programs of an --object")
    if obj is not None:
        _attach_object(arch, profile, synth, no_calls, as_json, obj, jit)
        return
    kind, _, pattern = spec.partition(":")
    if kind not in ("fentry", "fexit", "fmod_ret") or not pattern:
        raise UsageError(f"SPEC must be fentry|fexit|fmod_ret:PATTERN, not {spec!r}")
    with _status(f"booting {synth:,} synthetic functions" if synth else "booting", as_json):
        k = _profile_kernel_synth(arch, profile, synth)
    runs = {"n": 0}

    def count(ctx):
        runs["n"] += 1
    prog = k.bpf.load("count", kind, count, None, multi=True)
    names = k.bpf.resolve_targets(pattern)
    stats = k.ftrace.stats

    def measure(action):
        before = (stats.updates, stats.pokes, stats.sync_cores + stats.stop_machines,
                  stats.synchronize_rcu)
        t0 = time.perf_counter()
        result = action()
        after = (stats.updates, stats.pokes, stats.sync_cores + stats.stop_machines,
                 stats.synchronize_rcu)
        return result, dict(zip(("updates", "pokes", "syncs", "synchronize_rcu"),
                                (b - a for a, b in zip(before, after))),
                            seconds=round(time.perf_counter() - t0, 3))
    with _status(f"attaching to {len(names):,} functions", as_json):
        link, attach_cost = measure(lambda: k.bpf.attach_multi(prog, names))
    called = 0 if no_calls else _call_each(k, names, quiet=as_json)
    with _status(f"detaching from {len(names):,} functions", as_json):
        _, detach_cost = measure(link.detach)
    out = {"arch": k.arch.name, "profile": k.profile.name, "kind": kind, "pattern": pattern,
           "functions": len(names), "called": called, "program_runs": runs["n"],
           "attach": attach_cost, "detach": detach_cost}
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    from .termtable import print_table
    print_table(_console(), escape(f"{k.arch.name} {k.profile.name}: {kind} on {len(names):,} "
                                   f"functions matching {pattern!r}"),
                ["", "ftrace updates", "text pokes", "sync points", "synchronize_rcu",
                 "seconds"],
                [[what, *(str(c[x]) for x in ("updates", "pokes", "syncs", "synchronize_rcu",
                                              "seconds"))]
                 for what, c in (("attach", attach_cost), ("detach", detach_cost))])
    if not no_calls:
        click.echo(f"called {called:,} functions once each; the program ran {runs['n']:,} times")


def _attach_object(arch, profile, synth, no_calls, as_json, path, jit) -> None:
    """tramplab attach --object: load a user's object, attach its programs, call each target
    once, print what each program's globals hold."""
    k = _profile_kernel_synth(arch, profile, synth)
    lo = k.load_object(path, mode="jit" if jit else "interp")
    if not lo.progs:
        raise UsageError(f"{path}: no autoloaded fentry/fexit/fmod_ret program to attach")
    lo.attach()
    targets = list(dict.fromkeys(lp.obj.target for lp in lo.progs))
    called = 0 if no_calls else _call_each(k, targets, quiet=True)
    vals = lo.variables()

    def show(v):
        return v.hex() if isinstance(v, bytes) else v
    progs = [{"name": name, "section": lp.obj.section, "kind": lp.obj.kind,
              "target": lp.obj.target} for name, lp in lo.programs.items()]
    out = {"arch": k.arch.name, "profile": k.profile.name, "object": str(path),
           "mode": "jit" if jit else "interp", "programs": progs, "called": called,
           "globals": {n: show(v) for n, v in vals.items()}}
    lo.detach()
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    from .termtable import print_table
    print_table(_console(), escape(f"{k.arch.name} {k.profile.name}: {lo.obj.name} "
                                   f"({out['mode']})"),
                ["program", "section", "kind", "target"],
                [[escape(str(p[c])) for c in ("name", "section", "kind", "target")]
                 for p in progs])
    if not no_calls:
        click.echo(f"called {called} target function(s) once each")
    print_table(_console(), "globals after the calls", ["global", "value"],
                [[escape(n), escape(str(show(v)) if isinstance(v, bytes)
                                    else f"{v} ({v:#x})")] for n, v in vals.items()])


def _profile_kernel_synth(arch: str, profile: str | None, synth: int):
    from .kernel import Kernel
    from .profiles import check_version
    if profile and profile.lstrip("v").replace(".", "").isdigit():
        check_version(_arch(arch), profile)
    return Kernel(_arch(arch), profile=profile, synth=synth)


@contextlib.contextmanager
def _status(what: str, quiet: bool = False):
    """A spinner on stderr while one long step runs (terminal only, never with --json)."""
    if quiet or not sys.stderr.isatty():
        yield
        return
    with Console(stderr=True).status(what):
        yield


def _call_each(k, names, quiet: bool) -> int:
    """Call every function once with zero arguments; a pointer argument points at a zeroed
    buffer (functions such as bpf_fentry_test8 dereference theirs)."""
    from rich.progress import Progress
    zeros = k.kmalloc(256)

    def arg(p):
        return (0, 0) if p.kind == "struct" else zeros if p.kind == "ptr" else 0
    with Progress(disable=quiet or len(names) < 2000 or not sys.stderr.isatty(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("calling", total=len(names))
        for name in names:
            fn = k.function(name)
            k.call(name, *[arg(p) for p in fn.proto.params])
            bar.advance(task)
    return len(names)


@main.command(name="unwind")
@click.option("--arch", "-a", required=True, help=ARCH_HELP)
@click.option("--profile", "-p", default=None,
              help="profile preset (default latest) or vX.Y[.Z] (see `tramplab profiles`)")
@click.option("--unwinder", "-u", default=None,
              help="the kernel's unwinder (" + "; ".join(
                  f"{a}: {' | '.join(arch_module(a, 'unwind').UNWINDERS)}"
                  for a in port_names()) + "; default: the first)")
@click.option("--call", "-c", "function", default=None,
              help="function to call (default: the selftests' caller of the traced function)")
@click.option("--args", "call_args", default=None, help="its arguments, comma-separated")
@click.option("--flagged", is_flag=True, help="print only the pcs with flags")
@click.option("--json", "as_json", is_flag=True, help="print the whole report as JSON")
@click.argument("programs", nargs=-1)
def unwind_cmd(arch, profile, unwinder, function, call_args, flagged, as_json, programs):
    """Check stack traces at every instruction of a traced call: attach PROGRAMS
    (fentry:FUNC, fexit:FUNC, fmod_ret:FUNC; or ftrace users ops:FUNC, regs-ops:FUNC,
    direct:FUNC, direct-after:FUNC, livepatch:FUNC), step the call one instruction at a time and, at
    each pc, compare the kernel's unwinder (as if the task were interrupted there, and blocked
    in each C function called) with the true call chain.  Flags: unsymbolised, caller-missing,
    skipped, duplicated, wrong, incomplete, RELIABLE-BUT-WRONG, rows-wrong (a tramplab bug).

    Example: tramplab unwind --arch x86_64 --profile v6.6 fexit:bpf_fentry_test2
    """
    from .check import unwind as unwind_check
    k = _profile_kernel(arch, profile)
    args = None
    if call_args is not None:
        try:
            args = [int(a, 0) for a in call_args.split(",") if a.strip()]
        except ValueError:
            raise UsageError(f"--args wants comma-separated integers, not {call_args!r}") from None
    report = unwind_check.run(k, list(programs), function, args, unwinder)
    if as_json:
        click.echo(json.dumps(unwind_check.as_dict(k, report), indent=1))
    else:
        click.echo("\n".join(unwind_check.render(k, report, flagged)))


@main.group(name="scenario")
def scenario_group():
    """Known bugs as runnable scenarios: a buggy and a fixed configuration each, and the
    symptom to expect (check/scenarios.py)."""


@scenario_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
def scenario_list(as_json):
    """List the scenarios, where they run and what they show."""
    from .check.scenarios import SCENARIOS, arches_of
    from .termtable import print_table
    if as_json:
        click.echo(json.dumps([{"name": s.name, "what": s.title, "arches": arches_of(s.name),
                                "from": s.source} for s in SCENARIOS.values()], indent=1))
        return
    print_table(_console(), "scenarios", ["name", "what", "arches", "from"],
                [[escape(s.name), escape(s.title), ", ".join(arches_of(s.name)),
                  escape(s.source)] for s in SCENARIOS.values()])


@scenario_group.command(name="run")
@click.option("--arch", "-a", default="all", show_default=True, help=ARCH_HELP + " | all")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.argument("name")
def scenario_run(arch, as_json, name):
    """Run scenario NAME (or `all`): it passes when the buggy configuration shows the symptom
    and the fixed one does not.  Exit 1 if any fails."""
    from .check.scenarios import SCENARIOS, arches_of, run
    names = list(SCENARIOS) if name == "all" else [name]
    if name != "all" and name not in SCENARIOS:
        raise UsageError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    wanted = None if arch == "all" else _arch(arch)
    results = [run(n, a) for n in names for a in arches_of(n) if wanted in (None, a)]
    if not results:
        raise UsageError(f"scenario {name} does not run on {arch}; it runs on "
                         f"{', '.join(arches_of(name))}")
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        from .termtable import print_table
        print_table(_console(), "scenarios", ["scenario", "arch", "buggy profile: what happened",
                                              "fixed profile: what happened", "verdict"],
                    [[escape(r.scenario.name), r.arch, escape(f"{r.profiles[0]}: {r.buggy.what}"),
                      escape(f"{r.profiles[1]}: {r.fixed.what}"), "pass" if r.passed else "FAIL"]
                     for r in results])
        if len(names) == 1:
            _console().print(escape(SCENARIOS[names[0]].explain))    # wrapped to the width
    if not all(r.passed for r in results):
        sys.exit(1)


# ---------------------------------------------------------------------------------------------
@main.group(name="oracle")
def oracle_group():
    """Check the model against a real kernel: boot it under QEMU (TCG), attach the selftest
    shapes with raw bpf(2), read each trampoline back from /proc/kcore, and compare with the
    model running the profile derived from that kernel's .config (oracle/)."""


def _oracle_kernels(arch, kernel, image, config, refresh, console_file=None):
    from .oracle import kernels
    arches = list(port_names()) if arch == "all" else [_arch(arch)]
    if console_file and config:                     # a saved run: no image to boot
        return [kernels.user_kernel(arches[0], None, config, kernel)]
    if image or config:
        if not (image and config) or len(arches) != 1:
            raise UsageError("--image and --config go together, with one --arch")
        return [kernels.user_kernel(arches[0], image, config, kernel)]
    out = []
    for a in arches:
        try:
            out.append(kernels.debian_kernel(a, kernel, refresh=refresh))
        except kernels.KernelFetchError as e:
            raise UsageError(f"fetching Debian's {kernel} kernel for {a}: {e}") from None
    return out


def _oracle_options(f):
    f = click.option("--json", "as_json", is_flag=True, help="print the results as JSON")(f)
    f = click.option("--console", "console_file", default=None, metavar="FILE",
                     help="read a saved console of an earlier run instead of booting (one "
                          "--arch; with --config and --kernel VERSION no kernel package is "
                          "fetched)")(f)
    f = click.option("--model-version", default=None, metavar="VERSION",
                     help="derive the model's profile from the kernel's config at this "
                          "version's timeline instead of the kernel's own (e.g. 7.2, the "
                          "model's latest, for a newer kernel)")(f)
    f = click.option("--refresh", is_flag=True, help="update the package lists first")(f)
    f = click.option("--cpu", default=None, metavar="MODEL",
                     help="QEMU's -cpu for the boot (default: the arch's; e.g. x86-64 max, "
                          "whose LA57 boots a 5-level-paging kernel in 5-level paging)")(f)
    f = click.option("--out", "out_dir", default=None, metavar="DIR",
                     help="where to keep consoles and initrds (default: a cache directory)")(f)
    f = click.option("--config", default=None, metavar="FILE",
                     help="with --image: that kernel's .config")(f)
    f = click.option("--image", default=None, metavar="FILE",
                     help="boot your own kernel image instead of Debian's (needs --config and "
                          "--kernel VERSION)")(f)
    f = click.option("--kernel", "-k", default="6.12", show_default=True,
                     help="Debian's kernel series (newest point release) or exact version, "
                          "e.g. 6.12 or 6.12.117")(f)
    return f


def _oracle_reports(arch, kernel, image, config, refresh, out_dir, console_file=None,
                    quiet=False, model_version=None, cpu=None):
    from pathlib import Path
    from .oracle import run
    from .oracle.kernels import cache_dir
    if console_file and cpu:
        raise UsageError("--cpu is for a boot: a saved console was booted already")
    reports = []
    for rk in _oracle_kernels(arch, kernel, image, config, refresh, console_file):
        workdir = Path(out_dir) if out_dir else cache_dir() / "runs" / rk.release
        workdir.mkdir(parents=True, exist_ok=True)
        from .oracle.guest import GuestBuildError
        with _status(f"{rk.arch}: {rk.release} under QEMU and on the model", quiet):
            try:
                reports.append(run.check(rk.arch, rk, workdir, console_file,
                                         model_version=model_version, cpu=cpu))
            except (run.OracleError, GuestBuildError) as e:
                raise UsageError(f"{rk.arch} {rk.release}: {e}") from None
    return reports


@oracle_group.command(name="diff")
@click.option("--arch", "-a", default="all", show_default=True, help=ARCH_HELP + " | all")
@_oracle_options
def oracle_diff(arch, kernel, image, config, refresh, model_version, out_dir, console_file,
                as_json, cpu):
    """Per shape: the real kernel's trampoline and the model's, instructions and bytes on both
    sides, the same sequence or not (pointer values aside: oracle/compare.py) and the first
    divergence, whether the programs saw the same values, and (x86) whether the function
    starts with the same bytes before anything is attached: endbr64, or the poison IBT sealing
    wrote at boot.  Exit 1 on any divergence."""
    if console_file and arch == "all":
        raise UsageError("--console reads one arch's console: give --arch")
    reports = _oracle_reports(arch, kernel, image, config, refresh, out_dir, console_file,
                              quiet=as_json, model_version=model_version, cpu=cpu)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in reports], indent=1))
    else:
        _print_oracle(reports)
    if not all(r.same for r in reports):
        sys.exit(1)


@oracle_group.command(name="run")
@click.option("--arch", "-a", required=True, help=ARCH_HELP)
@_oracle_options
def oracle_run(arch, kernel, image, config, refresh, model_version, out_dir, console_file,
               as_json, cpu):
    """Boot the real kernel with the shapes and print what it generated: each trampoline's
    disassembly (calls named by the kernel's symbols, pointer loads folded), what the programs
    saw and the test_run retval (the console is kept)."""
    reports = _oracle_reports(arch, kernel, image, config, refresh, out_dir, console_file,
                              quiet=as_json, model_version=model_version, cpu=cpu)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in reports], indent=1))
        return
    con = _console()
    for r in reports:
        took = (f"QEMU {r.real_seconds:.1f} s" if r.real_seconds == r.real_seconds
                else "a saved run")
        con.print(escape(f"{r.arch} {r.kernel.release}: {took}; console {r.console_path}"))
        for res in r.results:
            k = res.kernel
            if k.refused:
                con.print(escape(f"\n{res.shape}: refused with {k.refused}"))
                continue
            con.print(escape(f"\n{res.shape}: {len(k.code)} bytes at {k.addr:#x}; seen "
                             f"{k.seen}; test_run retval {k.retval}"))
            for t in k.tokens:                  # what the comparison reads, beside the code
                raw = k.code[t.addr - k.addr:t.addr - k.addr + t.size].hex()
                note = f"   ; {t.text}" if "<" in t.text or "@" in t.text else ""
                con.print(escape(f"  {t.addr:#x}  {raw:<16} {t.listing}{note}"))


def _print_oracle(reports) -> None:
    from .termtable import print_table
    con = _console()
    rows = []
    for r in reports:
        for res in r.results:
            c = res.code
            site = {None: "-", True: "yes", False: escape(
                f"NO: kernel {res.kernel.entry.hex() if res.kernel.entry else '?'} / model "
                f"{res.model.entry.hex() if res.model.entry else '?'}")}[res.site_same]
            if c is None:
                seq = f"refused: kernel {res.kernel.refused}, model {res.model.refused}"
                rows.append([r.arch, escape(res.shape), "-", "-", escape(seq),
                             "yes" if res.values_same else "NO", site, ""])
                continue
            where = "" if c.same else escape(
                f"#{c.first}: kernel {c.kernel_at[2][0] if len(c.kernel_at) > 2 else '(end)'}"
                f" / model {c.model_at[2][0] if len(c.model_at) > 2 else '(end)'}")
            rows.append([r.arch, escape(res.shape), f"{c.kernel_insns} / {c.kernel_bytes}",
                         f"{c.model_insns} / {c.model_bytes}",
                         ("yes (identical bytes)" if c.identical_bytes else "yes") if c.same
                         else "NO", "yes" if res.values_same else "NO", site, where])
    print_table(con, "real kernel vs model", ["arch", "shape", "kernel insns / bytes",
                                              "model insns / bytes", "same sequence",
                                              "same values", "same site", "first divergence"],
                rows)
    for r in reports:
        note = ""
        if r.jit_default not in (None, "1"):
            note = (f"; net.core.bpf_jit_enable={r.jit_default} by default: programs run in "
                    "the interpreter, on both sides")
        if r.real_seconds == r.real_seconds:                 # not NaN: this run booted
            real = (f"real {r.real_seconds:.1f} s (QEMU TCG, boot included), model "
                    f"{r.model_seconds:.2f} s: {r.real_seconds / r.model_seconds:,.0f}x faster")
        else:
            real = f"a saved console ({r.console_path}); model {r.model_seconds:.2f} s"
        said = (f"the kernel booted in {r.paging} paging" if r.paging is not None else
                 "cpuinfo does not say the kernel's paging mode")
        note += (f"; {said}, the model's map is {r.model_paging}'s (pointers compared by the "
                 f"area they point into, their values aside)")
        con.print(escape(f"{r.arch}: {r.kernel.release} ({r.kernel.source}) vs profile "
                         f"{r.profile}: {real}{note}"))
