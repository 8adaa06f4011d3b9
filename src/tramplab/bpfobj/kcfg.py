"""`__kconfig` externs: the `.kconfig` map libbpf builds for an object, filled from the profile.

libbpf (tools/lib/bpf/libbpf.c of 6.12) collects every undefined symbol the BTF DATASEC
`.kconfig` names (bpf_object__collect_externs), types it (find_kcfg_type: a 1-byte `bool`, a
`char`, an integer of 1/2/4/8 bytes, `enum libbpf_tristate`, a char array), lays the externs
out in one read-only map -- sorted by alignment (descending), size (ascending), then name, each
at round_up(offset, its alignment) -- and points every `ld_imm64` of an extern at its slot
(RELO_EXTERN_LD64: map value + data_off).  Values (bpf_object__resolve_externs): `CONFIG_*`
from the running kernel's config (/proc/config.gz), the virtual `LINUX_KERNEL_VERSION`,
`LINUX_HAS_BPF_COOKIE` and `LINUX_HAS_SYSCALL_WRAPPER` computed by libbpf; an unset extern is
0 when `__weak`, else the load fails (-ESRCH); an unknown `LINUX_*` is 0 when weak, else
-EINVAL, as is any other name.

Here the config is the kernel profile's: the model knows the Kconfig symbols its profiles
decide (KNOWN_CONFIG, each set or not set per profile) and the symbols every kernel it builds
has (ALWAYS_Y).  Any other `CONFIG_*` is refused by name, weak or not, when a program being
loaded reads it -- a real kernel's config would give it a value the model does not know, and 0
would be a guess (libbpf resolves every extern of the object; the model refuses only what a
loaded program uses, as it does for maps).  `LINUX_KERNEL_VERSION`
is KERNEL_VERSION of the profile's version; `LINUX_HAS_BPF_COOKIE` whether the profile's
kernel has bpf_get_attach_cookie for tracing programs (libbpf probes the helper with another
program kind; the model only has this one); `LINUX_HAS_SYSCALL_WRAPPER` is refused (the model
has no system calls).  The map is kernel memory the programs read; the verifier's refusal of
writes into a frozen map is not modelled.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ObjectError

# Kconfig symbols the profiles decide: name -> the Profile switch that says y / not set.
KNOWN_CONFIG = {
    "CONFIG_DYNAMIC_FTRACE_WITH_REGS": "with_regs",
    "CONFIG_DYNAMIC_FTRACE_WITH_ARGS": "with_args",
    "CONFIG_DYNAMIC_FTRACE_WITH_CALL_OPS": "call_ops",
    "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS": "direct_calls",
    "CONFIG_DYNAMIC_FTRACE_WITH_JMP": "jmp",
    "CONFIG_HAVE_SINGLE_FTRACE_DIRECT_OPS": "single_direct_ops",
    "CONFIG_PREEMPTION": "preemption",
}
# y in every kernel the model builds: ftrace patches call sites, and a program is being loaded.
ALWAYS_Y = ("CONFIG_FUNCTION_TRACER", "CONFIG_DYNAMIC_FTRACE", "CONFIG_BPF_SYSCALL")
VIRTUAL = ("LINUX_KERNEL_VERSION", "LINUX_HAS_BPF_COOKIE")
REFUSED_VIRTUAL = {"LINUX_HAS_SYSCALL_WRAPPER": "the model has no system calls"}

TRI_NO, TRI_YES, TRI_MODULE = 0, 1, 2


class Unknown(ObjectError):
    """A value the model cannot give.  Refused when a program being loaded reads the extern
    (the slot of one no loaded program uses stays 0: get_func_ip_test's kprobe programs read
    CONFIG_X86_KERNEL_IBT, which its fentry programs never do)."""


@dataclass(frozen=True)
class Kcfg:
    """One extern's place in the .kconfig map (libbpf's extern_desc.kcfg)."""
    name: str
    kind: str                     # "bool" | "char" | "int" | "tristate" | "char[]"
    size: int
    align: int
    signed: bool
    weak: bool
    data_off: int = 0


def kernel_version(version: str) -> int:
    """KERNEL_VERSION(a, b, c) of a profile's version string ("6.12", "6.1.72", "6.19-rc3"),
    the patch level capped at 255 as libbpf's get_kernel_version does."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if m is None:
        raise ObjectError(f"LINUX_KERNEL_VERSION: cannot read the version {version!r}",
                          "EINVAL")
    a, b, c = int(m[1]), int(m[2]), int(m[3] or 0)
    return (a << 16) + (b << 8) + min(c, 255)


def known_names() -> list[str]:
    return sorted(KNOWN_CONFIG) + sorted(ALWAYS_Y) + list(VIRTUAL)


def _type(btf, type_id: int, name: str, weak: bool) -> Kcfg:
    """find_kcfg_type, btf__resolve_size and btf__align_of for one extern's type."""
    t = btf.skip_mods_and_typedefs(type_id)
    if t.kind == "INT":
        size, enc = t.size_or_type, t.int_encoding
        if enc & 4:
            kind = "bool" if size == 1 else None
        elif size == 1:
            kind = "char"
        else:
            kind = "int" if size in (2, 4, 8) else None
        if kind is not None:
            return Kcfg(name, kind, size, min(size, 8), bool(enc & 1) and kind != "bool", weak)
    elif t.kind in ("ENUM", "ENUM64") and t.name == "libbpf_tristate" and \
            (t.kind == "ENUM64" or t.size_or_type == 4):
        return Kcfg(name, "tristate", t.size_or_type, min(t.size_or_type, 8), False, weak)
    elif t.kind == "ARRAY" and t.array[2] > 0:
        elem = btf.skip_mods_and_typedefs(t.array[0])
        if elem.kind == "INT" and elem.size_or_type == 1 and not elem.int_encoding & 4:
            return Kcfg(name, "char[]", t.array[2], 1, False, weak)
    raise ObjectError(f"extern (kcfg) '{name}': type is unsupported (a bool, char, integer, "
                      "enum libbpf_tristate or char array)", "ENOTSUPP")


def layout(btf, externs: dict[str, bool]) -> list[Kcfg]:
    """The .kconfig map's externs in libbpf's order, each with its data_off (`externs`: name
    -> is weak, the undefined symbols the DATASEC names)."""
    types = dict(btf.datasec_vars(".kconfig"))
    descs = [_type(btf, types[n], n, weak) for n, weak in externs.items()]
    descs.sort(key=lambda d: (-d.align, d.size, d.name))
    out, off = [], 0
    for d in descs:
        data_off = (off + d.align - 1) // d.align * d.align
        out.append(Kcfg(d.name, d.kind, d.size, d.align, d.signed, d.weak, data_off))
        off = data_off + d.size
    return out


def _value(profile, d: Kcfg):
    """The value libbpf would find: "y", an int, or None (not set)."""
    n = d.name
    if n in KNOWN_CONFIG:
        return "y" if getattr(profile, KNOWN_CONFIG[n]) else None
    if n in ALWAYS_Y:
        return "y"
    if n.startswith("CONFIG_"):
        raise Unknown(f"__kconfig {n}: a Kconfig symbol the model does not know (its "
                          f"profiles decide {', '.join(sorted(KNOWN_CONFIG))}; always y: "
                          f"{', '.join(ALWAYS_Y)}; virtual: {', '.join(VIRTUAL)})",
                          "EOPNOTSUPP")
    if n == "LINUX_KERNEL_VERSION":
        return kernel_version(profile.kernel)
    if n == "LINUX_HAS_BPF_COOKIE":
        return int(bool(profile.cookie))
    if n in REFUSED_VIRTUAL:
        raise Unknown(f"__kconfig {n}: not modelled ({REFUSED_VIRTUAL[n]})", "EOPNOTSUPP")
    if n.startswith("LINUX_") and d.weak:
        return None                       # an unknown weak LINUX_ extern defaults to zero
    raise ObjectError(f"extern (kcfg) '{n}': unrecognized virtual extern (libbpf takes "
                      "CONFIG_* and its own LINUX_* names)", "EINVAL")


def _encode(d: Kcfg, value, order: str) -> bytes:
    """set_kcfg_value_tri / set_kcfg_value_num: the bytes of one extern's slot."""
    n = d.name
    if value == "y":
        if d.kind == "bool":
            v = 1
        elif d.kind == "tristate":
            v = TRI_YES
        elif d.kind == "char":
            v = ord("y")
        else:
            raise ObjectError(f"extern (kcfg) '{n}': value 'y' implies bool, tristate, or "
                              "char type", "EINVAL")
        return v.to_bytes(d.size, order)
    if d.kind not in ("int", "char", "bool"):
        raise ObjectError(f"extern (kcfg) '{n}': value '{value}' implies integer, char, or "
                          "boolean type", "EINVAL")
    if d.kind == "bool" and value > 1:
        raise ObjectError(f"extern (kcfg) '{n}': value '{value}' isn't boolean compatible",
                          "EINVAL")
    bits = 8 * d.size
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if d.signed else (0, (1 << bits) - 1)
    if not lo <= value <= hi:
        raise ObjectError(f"extern (kcfg) '{n}': value '{value}' doesn't fit in {d.size} "
                          "bytes", "ERANGE")
    return value.to_bytes(d.size, order, signed=d.signed)


def build(btf, externs: dict[str, bool], profile, order: str, who: str
          ) -> tuple[bytes, dict[str, tuple[int, object]]]:
    """The .kconfig map's bytes and {name: (data_off, value)} (value None: not set, 0; an
    Unknown error: a value the model cannot give, raised when a program reads it)."""
    try:
        descs = layout(btf, externs)
        data = bytearray(descs[-1].data_off + descs[-1].size if descs else 0)
        out = {}
        for d in descs:
            try:
                value = _value(profile, d)
            except Unknown as e:
                out[d.name] = (d.data_off, e)
                continue
            if value is None and not d.weak:
                raise ObjectError(f"extern '{d.name}' (strong): not resolved (not set in "
                                  f"this profile's kernel)", "ESRCH")
            if value is not None:
                data[d.data_off:d.data_off + d.size] = _encode(d, value, order)
            out[d.name] = (d.data_off, value)
    except ObjectError as e:
        raise ObjectError(f"{who}: {str(e).split(': ', 1)[1]}", e.errno_name) from None
    return bytes(data), out
