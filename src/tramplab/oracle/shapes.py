"""The shapes `tramplab oracle` attaches on a real kernel and on the model: the selftests'
trampoline shapes (fentry, fexit, fentry+fexit, fmod_ret+fexit, 6 and 7 arguments, func-ip, two
programs), each a list of programs on kernel functions that `bpf_prog_test_run` calls
(net/bpf/test_run.c, bpf_prog_test_run_tracing; the model's tramplab_test_run_*).

Every program records what it saw into its map's one value, as u64 words:
    [0] how many times it ran   [1] bpf_get_func_ip() (func-ip programs, else 0)
    [2 + i] ctx slot i: the arguments, then (fexit, fmod_ret) the return value
and returns `ret` (fmod_ret: nonzero skips the original).  The same bytecode goes to the real
kernel (BPF_PROG_LOAD) and the same record is produced on the model by a program body.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# enum bpf_attach_type (include/uapi/linux/bpf.h)
ATTACH_TYPE = {"fentry": 24, "fexit": 25, "fmod_ret": 26}
BPF_FUNC_map_lookup_elem = 1
BPF_FUNC_get_func_ip = 173
SHAPES_MAGIC = 0x524F4C54                   # "TLOR"
VALUE_WORDS = 32                            # the guest's map value: 256 bytes


@dataclass(frozen=True)
class Prog:
    kind: str                               # fentry | fexit | fmod_ret
    target: str
    func_ip: bool = False
    ret: int = 0                            # what the program returns (fmod_ret: the override)


@dataclass(frozen=True)
class Shape:
    name: str
    progs: tuple[Prog, ...]
    trigger: str = "tracing"                # tracing: bpf_fentry_test1..9; modify_return
    # ctx slots holding addresses of the caller's locals (differ between any two runs)
    address_slots: dict = field(default_factory=dict)
    since: str = "5.5"                      # first kernel with every target function

    @property
    def targets(self) -> list[str]:
        return sorted({p.target for p in self.progs})


def _shape(name, *progs, trigger="tracing", address_slots=None, since="5.5"):
    return Shape(name, tuple(progs), trigger, address_slots or {}, since)


FMOD = "modify_return"
SHAPES: tuple[Shape, ...] = (
    _shape("fentry", Prog("fentry", "bpf_fentry_test1")),
    _shape("fexit", Prog("fexit", "bpf_fentry_test2")),
    _shape("fentry+fexit", Prog("fentry", "bpf_fentry_test3"), Prog("fexit", "bpf_fentry_test3")),
    _shape("fexit 6 args", Prog("fexit", "bpf_fentry_test6")),
    _shape("two fentry", Prog("fentry", "bpf_fentry_test5"), Prog("fentry", "bpf_fentry_test5")),
    _shape("fentry func-ip", Prog("fentry", "bpf_fentry_test4", func_ip=True)),
    _shape("fexit func-ip", Prog("fexit", "bpf_fentry_test4", func_ip=True)),
    _shape("fmod_ret+fexit", Prog("fmod_ret", "bpf_modify_return_test"),
           Prog("fexit", "bpf_modify_return_test"), trigger=FMOD,
           address_slots={"bpf_modify_return_test": (1,)}),
    _shape("fmod_ret override", Prog("fmod_ret", "bpf_modify_return_test", ret=1000),
           trigger=FMOD, address_slots={"bpf_modify_return_test": (1,)}),
    _shape("fexit 7 args", Prog("fexit", "bpf_modify_return_test2"), trigger=FMOD,
           address_slots={"bpf_modify_return_test2": (1,)}, since="6.7"),
    # prog_tests/trampoline_count.c: BPF_MAX_TRAMP_LINKS programs on one function, fentry,
    # fexit and fmod_ret in turn; whether the image still fits a page is the arch's business
    _shape("38 programs", *(Prog(("fentry", "fexit", "fmod_ret")[i % 3], "bpf_modify_return_test")
                            for i in range(38)), trigger=FMOD,
           address_slots={"bpf_modify_return_test": (1,)}),
)


def shape(name: str) -> Shape:
    for s in SHAPES:
        if s.name == name:
            return s
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# eBPF bytecode (include/uapi/linux/bpf.h encodings), only what the recording program needs
# ---------------------------------------------------------------------------------------------
# eBPF instructions and the shapes file are in the guest's byte order (the arch's); this
# module builds them little-endian and `encode` is told the order (every supported arch is
# little-endian today; a big-endian port would also swap the register nibbles, as the kernel's
# struct bpf_insn bitfields do)
ORDER = "little"


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return (bytes((code, (src << 4) | dst)) + off.to_bytes(2, ORDER, signed=True)
            + imm.to_bytes(4, ORDER, signed=True))


def mov64_reg(dst, src):   return _insn(0xBF, dst, src)                 # dst = src
def mov64_imm(dst, imm):   return _insn(0xB7, dst, imm=imm)             # dst = imm
def add64_imm(dst, imm):   return _insn(0x07, dst, imm=imm)             # dst += imm
def ldx_dw(dst, src, off): return _insn(0x79, dst, src, off)            # dst = *(u64 *)(src + off)
def stx_dw(dst, src, off): return _insn(0x7B, dst, src, off)            # *(u64 *)(dst + off) = src
def st_w(dst, off, imm):   return _insn(0x62, dst, off=off, imm=imm)    # *(u32 *)(dst + off) = imm
def call(helper):          return _insn(0x85, imm=helper)               # call helper
def jeq_imm(dst, imm, off): return _insn(0x15, dst, off=off, imm=imm)   # if dst == imm goto +off
def exit_():               return _insn(0x95)                           # exit


def ld_map_fd() -> bytes:
    """r1 = map (ld_imm64, src BPF_PSEUDO_MAP_FD); the guest writes the map's fd in."""
    return _insn(0x18, 1, 1) + _insn(0)


def recorder(nslots: int, func_ip: bool, ret: int) -> bytes:
    """The recording program for a target with nslots ctx slots."""
    head = [mov64_reg(6, 1)]                        # r6 = ctx
    if func_ip:
        head += [call(BPF_FUNC_get_func_ip),        # r0 = bpf_get_func_ip(ctx)
                 mov64_reg(7, 0)]                   # r7 = r0
    else:
        head += [mov64_imm(7, 0)]                   # r7 = 0
    head += [st_w(10, -4, 0),                       # *(u32 *)(r10 - 4) = 0: the key
             mov64_reg(2, 10),                      # r2 = r10
             add64_imm(2, -4)]                      # r2 += -4
    body = [ldx_dw(1, 0, 0),                        # r1 = value[0]
            add64_imm(1, 1),                        # r1 += 1
            stx_dw(0, 1, 0),                        # value[0] = r1
            stx_dw(0, 7, 8)]                        # value[1] = r7 (the func ip)
    for i in range(nslots):
        body += [ldx_dw(1, 6, 8 * i),               # r1 = ctx[i]
                 stx_dw(0, 1, 16 + 8 * i)]          # value[2 + i] = r1
    tail = [mov64_imm(0, ret), exit_()]             # return ret
    lookup = [ld_map_fd(),                          # r1 = map
              call(BPF_FUNC_map_lookup_elem),       # r0 = bpf_map_lookup_elem(map, &key)
              jeq_imm(0, 0, len(body))]             # if r0 == 0 goto tail
    return b"".join(head + lookup + body + tail)


# kernel functions the trampolines call, named on both sides (kallsyms prefixes)
NAMED_CALLS = ("__bpf_prog_enter", "__bpf_prog_exit", "__bpf_tramp_enter", "__bpf_tramp_exit",
               "__bpf_prog_run",
               "bpf_fentry_test", "bpf_modify_return_test", "ftrace_caller", "ftrace_stub",
               "ftrace_regs_caller", "ftrace_common", "__fentry__")


def encode(shapes, nslots_of, byteorder: str) -> bytes:
    """The /shapes file the guest reads (oracle/guest/guest.c, run_shape): u32s and
    length-prefixed strings in the guest's byte order.  nslots_of(prog) -> how many ctx slots
    prog may read."""
    if byteorder != ORDER:
        raise ValueError(f"the oracle's guest formats are {ORDER}-endian, not {byteorder}")

    def u32(*values: int) -> bytes:
        return b"".join(v.to_bytes(4, byteorder) for v in values)

    def text(s: str) -> bytes:
        b = s.encode()
        return u32(len(b)) + b

    out = [u32(SHAPES_MAGIC, len(shapes), len(NAMED_CALLS))]
    out += [text(prefix) for prefix in NAMED_CALLS]
    for s in shapes:
        out.append(text(s.name) + u32(len(s.progs), int(s.trigger == FMOD)))
        for p in s.progs:
            code = recorder(nslots_of(p), p.func_ip, p.ret)
            out.append(text(p.target) + u32(ATTACH_TYPE[p.kind], len(code) // 8))
            out.append(code)
    return b"".join(out)
