"""A small reader of the BTF an object carries (.BTF, .BTF.ext), only as far as the loader needs:
type kinds and names, DATASEC members (which externs are `.ksyms` and which `.kconfig`), FUNC ->
FUNC_PROTO argument counts, and the CO-RE relocation records of .BTF.ext (counted per section
so a program using one is refused by name).  Layout: include/uapi/linux/btf.h and
tools/lib/bpf/libbpf_internal.h (struct btf_ext_header)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ObjectError

BTF_MAGIC = 0xEB9F
KINDS = {0: "UNKN", 1: "INT", 2: "PTR", 3: "ARRAY", 4: "STRUCT", 5: "UNION", 6: "ENUM",
         7: "FWD", 8: "TYPEDEF", 9: "VOLATILE", 10: "CONST", 11: "RESTRICT", 12: "FUNC",
         13: "FUNC_PROTO", 14: "VAR", 15: "DATASEC", 16: "FLOAT", 17: "DECL_TAG",
         18: "TYPE_TAG", 19: "ENUM64"}
# bytes that follow struct btf_type, as (fixed, per vlen member)
_TAIL = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0),
         15: (0, 12), 17: (4, 0), 19: (0, 12)}


@dataclass
class BtfType:
    id: int
    kind: str
    name: str
    vlen: int
    size_or_type: int
    members: list = field(default_factory=list)      # DATASEC: (type id, offset, size)
    params: int = 0                                  # FUNC_PROTO: parameter count
    int_encoding: int = 0                            # INT: BTF_INT_SIGNED 1, CHAR 2, BOOL 4
    array: tuple = ()                                # ARRAY: (elem type, index type, nelems)


def _u32s(data: bytes, off: int, n: int, order: str) -> list[int]:
    """n u32 fields from off, in the object's byte order."""
    return [int.from_bytes(data[off + 4 * i:off + 4 * i + 4], order) for i in range(n)]


def _header(data: bytes, order: str, where: str) -> tuple[int, int]:
    """(magic, hdr_len) of a BTF or BTF.ext header: u16 magic, u8 version, u8 flags, u32."""
    return int.from_bytes(data[0:2], order), _u32s(data, 4, 1, order)[0]


class Btf:
    def __init__(self, data: bytes, where: str = ".BTF", order: str = ""):
        self.order = order
        self.types: list[BtfType] = [BtfType(0, "UNKN", "", 0, 0)]
        if len(data) < 24:
            raise ObjectError(f"{where}: {len(data)} bytes, shorter than a BTF header", "EINVAL")
        magic, hdr_len = _header(data, order, where)
        type_off, type_len, str_off, str_len = _u32s(data, 8, 4, order)
        if magic != BTF_MAGIC:
            raise ObjectError(f"{where}: bad magic {magic:#x}", "EINVAL")
        tbase, sbase = hdr_len + type_off, hdr_len + str_off
        if tbase + type_len > len(data) or sbase + str_len > len(data):
            raise ObjectError(f"{where}: type or string section runs past its end (truncated)",
                              "EINVAL")
        self._strs = data[sbase:sbase + str_len]
        off, end = tbase, tbase + type_len
        while off < end:
            if off + 12 > end:
                raise ObjectError(f"{where}: truncated type at {off}", "EINVAL")
            name_off, info, st = _u32s(data, off, 3, order)
            off += 12
            kind_no, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            if kind_no not in KINDS or kind_no == 0:
                raise ObjectError(f"{where}: unknown BTF kind {kind_no} (type "
                                  f"{len(self.types)})", "EINVAL")
            fixed, per = _TAIL.get(kind_no, (0, 0))
            t = BtfType(len(self.types), KINDS[kind_no], self.string(name_off), vlen, st)
            if kind_no == 15:
                t.members = [tuple(_u32s(data, off + 12 * i, 3, order)) for i in range(vlen)]
            if kind_no == 13:
                t.params = vlen
            if kind_no == 1:
                t.int_encoding = (_u32s(data, off, 1, order)[0] >> 24) & 0xF
            if kind_no == 3:
                t.array = tuple(_u32s(data, off, 3, order))
            off += fixed + per * vlen
            self.types.append(t)

    def string(self, off: int) -> str:
        end = self._strs.find(b"\0", off)
        return self._strs[off:end if end >= 0 else None].decode("utf-8", "replace")

    def datasec_names(self, section: str) -> set[str]:
        """The names of the VARs/FUNCs a DATASEC (".ksyms", ".kconfig", ...) holds."""
        out = set()
        for t in self.types:
            if t.kind == "DATASEC" and t.name == section:
                out |= {self.types[m[0]].name for m in t.members}
        return out

    def datasec_vars(self, section: str) -> list[tuple[str, int]]:
        """(name, type id) of each VAR a DATASEC holds, in its order."""
        out = []
        for t in self.types:
            if t.kind == "DATASEC" and t.name == section:
                for m in t.members:
                    v = self.type(m[0])
                    if v.kind == "VAR":
                        out.append((v.name, v.size_or_type))
        return out

    def type(self, type_id: int) -> BtfType:
        if not 0 <= type_id < len(self.types):
            raise ObjectError(f".BTF: type id {type_id} out of range (truncated?)", "EINVAL")
        return self.types[type_id]

    def skip_mods_and_typedefs(self, type_id: int) -> BtfType:
        """libbpf's skip_mods_and_typedefs: through TYPEDEF/CONST/VOLATILE/RESTRICT/TYPE_TAG."""
        t = self.type(type_id)
        for _ in range(len(self.types)):
            if t.kind not in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
                return t
            t = self.type(t.size_or_type)
        raise ObjectError(".BTF: a loop of typedefs or modifiers", "EINVAL")

    def func_params(self, name: str) -> int | None:
        for t in self.types:
            if t.kind == "FUNC" and t.name == name:
                return self.types[t.size_or_type].params
        return None


def core_relos(data: bytes, strings: Btf) -> dict[str, int]:
    """.BTF.ext: number of CO-RE relocation records per section name."""
    if len(data) < 8:
        raise ObjectError(".BTF.ext: shorter than its header", "EINVAL")
    order = strings.order
    magic, hdr_len = _header(data, order, ".BTF.ext")
    if magic != BTF_MAGIC:
        raise ObjectError(f".BTF.ext: bad magic {magic:#x}", "EINVAL")
    if hdr_len < 32 or len(data) < 32:
        return {}
    core_off, core_len = _u32s(data, 24, 2, order)
    if not core_len:
        return {}
    base = hdr_len + core_off
    end = base + core_len
    if end > len(data):
        raise ObjectError(".BTF.ext: CO-RE records run past its end (truncated)", "EINVAL")
    rec_size = _u32s(data, base, 1, order)[0]
    off, out = base + 4, {}
    while off + 8 <= end:
        sec_off, n = _u32s(data, off, 2, order)
        out[strings.string(sec_off)] = n
        off += 8 + n * rec_size
    return out
