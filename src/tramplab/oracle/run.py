"""`tramplab oracle`: the shapes on a real kernel under QEMU and on the model, side by side.

A real run boots the kernel with the guest (oracle/guest.py) and parses its console
(oracle/console.py); a model run attaches the same programs to the model booted with the
profile derived from that kernel's .config (Profile.from_kconfig).  Each side gives, per
shape: the trampoline of the shape's function (code and address), what each program recorded,
and the test_run retval."""
from __future__ import annotations

import errno as _errno
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from ..arch import get_port
from ..profiles import version_key
from . import console, guest, shapes as S
from .compare import CodeDiff, compare, tokens
from .kernels import RealKernel

MEMORY = "1024"
BOOT_TIMEOUT = 600                          # seconds; a TCG boot and run takes 7-30


class OracleError(Exception):
    pass


@dataclass
class Observed:
    """One shape on one side."""
    shape: str
    refused: str | None = None                      # errno name when a load/attach failed
    code: bytes = b""
    addr: int = 0
    seen: list = field(default_factory=list)        # per program: normalised record
    retval: int | None = None
    tokens: list = field(default_factory=list)
    entry: bytes | None = None                      # OracleFacts.entry_bytes at the function,
                                                    # before attaching (None: not compared)


def nslots(proto_of, prog: S.Prog) -> int:
    return len(proto_of(prog.target)) + (prog.kind != "fentry")


def _errname(neg: int) -> str:
    """-errno as the kernel names it (524 is the kernel-internal ENOTSUPP)."""
    return "ENOTSUPP" if neg == -524 else _errno.errorcode.get(-neg, str(neg))


def record(words: list[int], prog: S.Prog, shape: S.Shape, widths: list[int], func: int) -> list:
    """What a program saw, made comparable: how often it ran, its func ip as an offset from the
    function, every slot cut to its C type's width; address slots (the caller's locals) are
    'addr'."""
    count, ip = words[0], words[1]
    out = [count, (ip - func) if prog.func_ip and ip else 0]
    skip = shape.address_slots.get(prog.target, ())
    for i, width in enumerate(widths):
        v = words[2 + i]
        out.append("addr" if i in skip else v & ((1 << (8 * width)) - 1))
    return out


# ---------------------------------------------------------------------------------------------
# the real kernel
# ---------------------------------------------------------------------------------------------
CPU_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,=+-]*")


def qemu_command(arch: str, cpu: str | None = None) -> list[str]:
    """The arch's QEMU line up to the kernel, with `cpu` as its -cpu (replacing the arch's)."""
    base = list(get_port(arch).oracle.qemu)
    if cpu is None:
        return base
    if not CPU_MODEL.fullmatch(cpu):
        raise OracleError(f"--cpu {cpu!r}: not a QEMU CPU model (letters, digits and _.,=+-)")
    if "-cpu" in base:
        base[base.index("-cpu") + 1] = cpu
        return base
    return base + ["-cpu", cpu]


def boot(arch: str, kernel: RealKernel, shapes_file: bytes, workdir,
         cpu: str | None = None) -> tuple[bytes, float]:
    facts = get_port(arch).oracle
    qemu = qemu_command(arch, cpu)
    if not shutil.which(facts.qemu[0]):
        raise OracleError(f"{facts.qemu[0]} is not installed (Debian: apt-get install "
                          "qemu-system-x86 qemu-system-arm qemu-system-misc opensbi)")
    initrd = workdir / f"initrd-{arch}.gz"
    initrd.write_bytes(guest.initrd(arch, shapes_file))
    cmd = [*qemu, "-m", MEMORY, "-nographic", "-no-reboot", "-kernel", str(kernel.image),
           "-initrd", str(initrd), "-append",
           f"console={facts.console} panic=-1 nokaslr loglevel=1"]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=BOOT_TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise OracleError(f"{kernel.release} did not power off within {BOOT_TIMEOUT} s") from e
    wall = time.perf_counter() - t0
    (workdir / f"console-{arch}.txt").write_bytes(res.stdout)
    if res.returncode != 0 and b"@TL " not in res.stdout:
        said = res.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise OracleError(f"{qemu[0]} exited with {res.returncode} before the guest ran: "
                          f"{said[0]}")
    return res.stdout, wall


def observe_real(arch: str, run: console.GuestRun, shapes, proto_of,
                 space=None) -> list[Observed]:
    """What the kernel generated and what its programs saw; pointers are named by the areas of
    `space` (the paging mode it booted in: ArchInfo.space)."""
    facts = get_port(arch).oracle
    area = space.area_of if space is not None else (lambda value: None)
    names = dict(run.ksyms)
    out = []
    if run.fatal:
        raise OracleError(f"the guest stopped: {run.fatal}")
    if not run.finished:
        raise OracleError("the guest did not finish (see the saved console)")
    for shape, sr in zip(shapes, run.shapes):
        obs = Observed(shape.name)
        out.append(obs)
        before = sr.sites.get(("before", shape.progs[0].target))
        if facts.entry_bytes and before and len(before[1]) >= 16 + facts.entry_bytes:
            obs.entry = before[1][16:16 + facts.entry_bytes]    # the window starts at addr-16
        bad = [(i, p) for i, p in enumerate(sr.progs) if p.load_errno or p.attach_errno]
        if bad:
            i, p = bad[0]
            what = "load" if p.load_errno else "attach"
            obs.refused = f"prog {i} {what}: {_errname(p.load_errno or p.attach_errno)}"
            continue
        func = shape.progs[0].target
        addr, window = sr.sites[("attached", func)]
        target = facts.site_target(addr, window)
        if target not in sr.memory:
            target = through_ops(sr, func, order=get_port(arch).info.byteorder) or target
        if target not in sr.memory:
            raise OracleError(f"{shape.name}: the site of {func} calls {target and hex(target)}, "
                              "which is no trampoline the kernel listed, and its ftrace_ops "
                              "names none either")
        page = sr.memory[target]
        obs.code, obs.addr = page[:facts.code_length(page)], target
        progs = {a: m.group(1) for a, n in sr.symbols.items()
                 if (m := re.search(r"_tl_p(\d+)$", n))}
        local = dict(names)
        local.update({a: f"prog {i}" for a, i in progs.items()})
        local.update({p.addr: p.target for p in sr.progs})
        obs.tokens = tokens(arch, obs.code, obs.addr, local.get, area)
        obs.retval = sr.retval
        for prog, pr in zip(shape.progs, sr.progs):
            order = get_port(arch).info.byteorder
            words = [int.from_bytes(pr.seen[8 * i:8 * i + 8], order)
                     for i in range(len(pr.seen) // 8)]
            obs.seen.append(record(words, prog, shape, _widths(proto_of, prog), pr.addr))
    return out


def through_ops(sr: console.ShapeRun, func: str, order: str) -> int | None:
    """The trampoline a CALL_OPS site reaches through ftrace_caller: the one address among the
    words of the function's ftrace_ops (its direct_call) that is a listed trampoline."""
    if func not in sr.ops:
        return None
    _, data = sr.ops[func]
    words = {int.from_bytes(data[i:i + 8], order) for i in range(0, len(data) - 7, 8)}
    found = words & set(sr.memory)
    return found.pop() if len(found) == 1 else None


def _widths(proto_of, prog: S.Prog) -> list[int]:
    params, ret = proto_of(prog.target), proto_of(prog.target, ret=True)
    return list(params) + ([ret] if prog.kind != "fentry" else [])


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def observe_model(arch: str, profile, shapes) -> list[Observed]:
    from ..errors import KernelError
    from ..kernel import Kernel
    k = Kernel(arch, profile=profile)
    proto_of = model_protos(k)
    entry_bytes = get_port(arch).oracle.entry_bytes
    out = []
    for shape in shapes:
        obs = Observed(shape.name)
        out.append(obs)
        if entry_bytes:
            obs.entry = k.memory.read(k.function(shape.progs[0].target).addr, entry_bytes)
        records, progs = [], []
        try:
            for i, prog in enumerate(shape.progs):
                words = [0] * S.VALUE_WORDS
                records.append(words)
                loaded = getattr(k, prog.kind)(prog.target, name=f"tl_p{i}",
                                               func_ip=prog.func_ip, attach=False)(
                    _recorder(words, prog, nslots(proto_of, prog)))
                progs.append(loaded)
            for i, p in enumerate(progs):
                try:
                    p.link = k.bpf.attach(p, 0)
                except KernelError as e:
                    obs.refused = f"prog {i} attach: {e.name}"
                    raise
        except KernelError as e:
            obs.refused = obs.refused or f"prog {len(progs)} load: {e.name}"
            for p in progs:
                if getattr(p, "link", None) is not None:
                    p.link.detach()
            continue
        im = k.bpf.trampoline_of(shape.progs[0].target).cur_image
        obs.code, obs.addr = bytes(im.code), im.addr
        prog_addr = {p.addr: f"prog {i}" for i, p in enumerate(progs) if hasattr(p, "addr")}
        obs.tokens = tokens(arch, obs.code, obs.addr, lambda a: _model_name(k, a, prog_addr),
                            k.machine.space.area_of)
        obs.retval = k.call("tramplab_test_run_modify_return" if shape.trigger == S.FMOD
                            else "tramplab_test_run_tracing") & 0xFFFFFFFF
        for prog, words in zip(shape.progs, records):
            func = k.function(prog.target).addr
            obs.seen.append(record(words, prog, shape, _widths(proto_of, prog), func))
        for p in progs:
            p.link.detach()
    return out


def _recorder(words: list, prog: S.Prog, n: int):
    def body(ctx):
        words[0] += 1
        if prog.func_ip:
            words[1] = ctx.func_ip
        for i in range(n):
            words[2 + i] = ctx.slot(i)
        return prog.ret
    return body


def _model_name(k, addr: int, progs: dict) -> str | None:
    if addr in progs:
        return progs[addr]
    sym = k.machine.kallsyms.lookup(addr)
    if sym is None or sym.addr != addr or sym.kind not in ("t", "T"):
        return None                             # data (struct bpf_prog, the image) is a <ptr>
    m = re.search(r"tl_p(\d+)(_\d+)?$", sym.name)
    return f"prog {m.group(1)}" if m else sym.name


def model_protos(k):
    """proto_of(func) -> the byte width of each ctx slot of func; ret=True: its return's."""
    def proto_of(func: str, ret: bool = False):
        proto = k.function(func).proto
        if ret:
            return proto.ret.size or 8
        widths = []
        for p in proto.params:
            n = (p.size + 7) // 8 if p.kind == "struct" else 1
            widths += [8] * n if p.kind == "struct" else [p.size if p.kind == "int" else 8]
        return widths
    return proto_of


# ---------------------------------------------------------------------------------------------
@dataclass
class ShapeResult:
    shape: str
    kernel: Observed
    model: Observed
    code: CodeDiff | None
    values_same: bool
    site_same: bool | None = None           # the bytes at the function before attaching
                                            # (OracleFacts.entry_bytes); None: not compared


def diff(real: list[Observed], model: list[Observed]) -> list[ShapeResult]:
    out = []
    for r, m in zip(real, model):
        code = None
        if not r.refused and not m.refused:
            code = compare(r.tokens, m.tokens, r.code, m.code)
        values = (r.refused == m.refused and r.seen == m.seen and r.retval == m.retval)
        site = None if r.entry is None or m.entry is None else r.entry == m.entry
        out.append(ShapeResult(r.shape, r, m, code, values, site))
    return out


# ---------------------------------------------------------------------------------------------
# one arch, end to end
# ---------------------------------------------------------------------------------------------
@dataclass
class ArchReport:
    arch: str
    kernel: RealKernel
    profile: str
    results: list
    real_seconds: float                     # QEMU from start to power-off (boot included)
    model_seconds: float                    # the model booted and run through the same shapes
    jit_default: str | None
    console_path: str
    paging: str | None = None                # the kernel's paging mode, where cpuinfo says
    model_paging: str = ""                   # the model's (the kernel's, or its config's largest)

    @property
    def same(self) -> bool:
        return all(r.values_same and (r.code is None or r.code.same) and r.site_same is not False
                   for r in self.results)

    def as_dict(self) -> dict:
        def side(o: Observed) -> dict:
            return {"refused": o.refused, "bytes": len(o.code), "insns": len(o.tokens),
                    "code": o.code.hex(), "seen": o.seen, "retval": o.retval,
                    "entry": o.entry.hex() if o.entry is not None else None}
        return {
            "arch": self.arch, "kernel": self.kernel.release, "source": self.kernel.source,
            "profile": self.profile,
            # null for a saved console (nothing booted): NaN is not JSON
            "real_seconds": (round(self.real_seconds, 2)
                             if self.real_seconds == self.real_seconds else None),
            "model_seconds": round(self.model_seconds, 3), "same": self.same,
            "jit_default": self.jit_default, "console": self.console_path,
            "paging": {"kernel": self.paging, "model": self.model_paging},
            "shapes": [{"shape": r.shape, "same_sequence": r.code.same if r.code else None,
                        "identical_bytes": r.code.identical_bytes if r.code else None,
                        "same_values": r.values_same, "same_site": r.site_same,
                        "first_divergence": None if not r.code or r.code.same else {
                            "index": r.code.first, "kernel": r.code.kernel_at,
                            "model": r.code.model_at},
                        "kernel": side(r.kernel), "model": side(r.model)} for r in self.results]}


def check(arch: str, kernel: RealKernel, workdir, console_file=None, shapes=S.SHAPES,
          model_version: str | None = None, cpu: str | None = None) -> ArchReport:
    """Boot `kernel` with the shapes (or read a saved console), run them on the model with the
    profile from the kernel's .config (at model_version's timeline when given: a kernel newer
    than the model's timelines is compared with `latest` that way), and compare."""
    from ..ftrace.kconfig import ConfigError
    from ..kernel import Kernel
    profile = _config_profile(kernel, model_version)
    shapes = [s for s in shapes if version_key(kernel.version) >= version_key(s.since)]
    proto_of = model_protos(Kernel(arch, profile=profile))
    if console_file:
        out, real_seconds = _read_console(console_file), float("nan")
        path = str(console_file)
    else:
        data = S.encode(shapes, lambda p: nslots(proto_of, p), get_port(arch).info.byteorder)
        out, real_seconds = boot(arch, kernel, data, workdir, cpu)
        path = str(workdir / f"console-{arch}.txt")
    try:
        parsed = console.parse(out)
    except console.ConsoleError as e:
        raise OracleError(f"{arch}: {e} (console saved at {path})") from e
    if parsed.jit_default is not None and (parsed.jit_default == "1") != profile.bpf_jit:
        raise OracleError(f"{arch}: the kernel booted with net.core.bpf_jit_enable="
                          f"{parsed.jit_default}, but the profile from its config has "
                          f"bpf_jit={profile.bpf_jit} (console saved at {path})")
    facts = get_port(arch).oracle
    paging = facts.paging(parsed.mmu, parsed.la57, parsed.wide_va)
    if paging is not None and paging != profile.paging:
        try:                        # the model in the mode the kernel booted in
            profile = _config_profile(kernel, model_version, paging)
        except ConfigError as e:
            raise OracleError(f"{arch}: the kernel booted in {paging} paging, which its config "
                              f"does not allow: {e} (console saved at {path})") from e
    space = get_port(arch).info.space(profile.paging)
    real = observe_real(arch, parsed, shapes, proto_of, space)
    t0 = time.perf_counter()
    model = observe_model(arch, profile, shapes)
    model_seconds = time.perf_counter() - t0
    return ArchReport(arch, kernel, profile.name, diff(real, model), real_seconds,
                      model_seconds, parsed.jit_default, path, paging, space.name)


def _read_console(path) -> bytes:
    """A saved console, plain or xz-compressed (as tests/oracle/ keeps them)."""
    import lzma
    data = open(path, "rb").read()
    if data.startswith(b"\xfd7zXZ\x00"):
        try:
            return lzma.decompress(data)
        except lzma.LZMAError as e:
            raise OracleError(f"{path}: a damaged xz file ({e})") from None
    return data


def _config_profile(kernel: RealKernel, model_version: str | None, paging: str | None = None):
    """The profile from the kernel's .config (at model_version's timeline when given), in
    `paging` (default: the largest mode the config allows)."""
    from ..errors import UsageError
    from ..profiles import LATEST, Profile
    try:
        return Profile.from_kconfig(str(kernel.config), kernel.version, model_version, paging)
    except UsageError as e:
        if model_version is None and version_key(kernel.version) > version_key(LATEST):
            raise UsageError(f"{e}; compare it with the model's latest timeline: "
                             f"--model-version {LATEST}") from None
        raise

