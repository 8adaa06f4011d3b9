"""SVG drawings generated from a recorded call (report/trace.py): the call path as boxes of
executed instructions, and the trampoline's stack frame to scale.  Plain strings: every value
is escaped here, the template inserts the result as it is."""
from __future__ import annotations

from html import escape

from .trace import POISON, ArchRun, Stage

FONT = 11                      # px, monospace
CHAR_W = 6.62                  # width of one monospace character at FONT
LINE_H = 14
PATH_W = 470                   # one arch's call path column
BOX_PAD = 6
GAP = 30                       # between boxes: room for the arrow and its label
SLOT_H = 24                    # px per 8 bytes of stack: the frame is drawn to scale
POISON_WORD = int.from_bytes(bytes([POISON]) * 8, "little")

KIND_COLOURS = {               # stage and slot kinds -> fill colour
    "caller": "#e8e8e8", "site": "#ffe2b3", "ftrace": "#f5d0e6", "trampoline": "#cfe3ff",
    "program": "#d4f2d0", "original": "#fff3b0", "parent": "#e8e8e8",
    "caller_stack_arg": "#eeeeee", "return_address": "#ffd6d6", "frame_pointer": "#f0d8ff",
    "retval": "#c8f0c0", "bpf_r0": "#e0f5dc", "arg": "#cfe3ff", "nr_args": "#dde9ff",
    "func_ip": "#ffe9c7", "run_ctx": "#fff3b0", "saved_reg": "#e3e3e3",
    "outgoing_arg": "#eeeeee", "padding": "#ffffff", "tail_call": "#eeeeee",
}


def short_symbol(where: str) -> str:
    """bpf_trampoline_644+0x1c/0xdc [bpf] -> bpf_trampoline_644+0x1c (symbol+offset)."""
    return where.split("/", 1)[0].split(" ", 1)[0]


def _clip(text: str, width: float) -> str:
    n = int(width / CHAR_W)
    return text if len(text) <= n else text[:max(n - 1, 1)] + "\u2026"


def _text(x, y, text, width, cls="", title=None) -> str:
    t = f"<title>{escape(title)}</title>" if title else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}">{t}{escape(_clip(text, width))}'
            "</text>")


# ------------------------------------------------------------------------------ call path
def _stage_lines(stage: Stage) -> list[tuple[str, str, str]]:
    """(css class, text, tooltip) per line of a stage box: instructions and host calls."""
    hosts = dict(stage.host_calls)
    lines = []
    for i, st in enumerate(stage.steps):
        note = stage.notes.get(st.pc)
        text = f"{short_symbol(st.where):<30} {st.insn.text}" + (f"  ; {note}" if note else "")
        lines.append(("insn", text, f"{st.pc:#x} {st.where}  {st.insn.raw.hex()}  {st.insn.text}"))
        if i + 1 in hosts:
            lines.append(("host", f"  \u21b3 {hosts[i + 1]}: kernel C, run as Python",
                          "a host call: the emulated code calls it; one ret instruction"))
    return lines


def _box(y: float, kind: str, title: str, count: str, lines, data_stage: str) -> tuple[str, float]:
    h = LINE_H + BOX_PAD * 2 + LINE_H * len(lines)
    parts = [f'<g class="stage" data-kind="{kind}" data-stage="{escape(data_stage)}" '
             f'data-insns="{escape(count)}">',
             f'<rect x="1" y="{y:.1f}" width="{PATH_W - 2}" height="{h:.1f}" rx="6" '
             f'fill="{KIND_COLOURS[kind]}" stroke="#555"/>',
             _text(BOX_PAD, y + BOX_PAD + FONT, f"{kind}: {title}", PATH_W - 110, "head"),
             f'<text x="{PATH_W - BOX_PAD}" y="{y + BOX_PAD + FONT:.1f}" class="count" '
             f'text-anchor="end">{escape(count)}</text>']
    for j, (cls, text, tip) in enumerate(lines):
        parts.append(_text(BOX_PAD, y + BOX_PAD + FONT + LINE_H * (j + 1), text,
                           PATH_W - 2 * BOX_PAD, cls, tip))
    parts.append("</g>")
    return "".join(parts), y + h


def _arrow(y: float, label: str) -> str:
    x = PATH_W / 2
    return (f'<line x1="{x}" y1="{y + 2}" x2="{x}" y2="{y + GAP - 4}" class="arrow" '
            f'marker-end="url(#head)"/>'
            + _text(x + 8, y + GAP / 2 + 4, label, PATH_W / 2 - 10, "edge"))


def path_svg(run: ArchRun) -> str:
    """caller -> every stage the call went through -> parent, one box each."""
    parts, y = [], 0.0
    box, y = _box(y, "caller", "tramplab's call harness", "",
                  [("host", f"{run.func}({', '.join(map(str, run.args))})", "")], "caller")
    parts.append(box)
    for n, stage in enumerate(run.stages):
        parts.append(_arrow(y, _edge(run.stages[n - 1]) if n else "enters the function"))
        y += GAP
        count = f"{len(stage.steps)} insns" + (f" + {len(stage.host_calls)} host"
                                                if stage.host_calls else "")
        box, y = _box(y, stage.kind, stage.title, count, _stage_lines(stage), f"{n}")
        parts.append(box)
    parts.append(_arrow(y, _edge(run.stages[-1]) if run.stages else ""))
    y += GAP
    box, y = _box(y, "parent", "back to the caller", "",
                  [("host", f"returned {run.result}", "")], "parent")
    parts.append(box)
    return _svg(PATH_W, y + 2, "".join(parts), "path")


def _edge(stage: Stage) -> str:
    """What took the call out of a stage: its last instruction."""
    return stage.steps[-1].insn.text if stage.steps else ""


def _svg(w: float, h: float, body: str, cls: str) -> str:
    defs = ('<defs><marker id="head" markerWidth="8" markerHeight="8" refX="4" refY="7" '
            'orient="auto"><path d="M0,0 L8,0 L4,8 z" fill="#333"/></marker></defs>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" width="{w:.0f}" '
            f'height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}">{defs}{body}</svg>')


# ------------------------------------------------------------------------------ stack frame
def value_text(v: int) -> str:
    """A slot's word: hex, with the decimal value when it is a small number (args, results)."""
    if v == POISON_WORD:
        return "(not yet written)"
    return f"{v:#x} ({v})" if 9 < v < 1 << 32 else f"{v:#x}"


def slot_offset(slot) -> str:
    return f"{slot.base}{slot.offset:+#x}" if slot.offset else f"{slot.base}+0"


def frame_svg(run: ArchRun) -> str:
    """The frame to scale (SLOT_H px per 8 bytes), highest address on top: offset from the
    arch's base register, what the slot holds, its value at each program's run."""
    label_w, holds_w, val_w = 90, 230, 150
    w = label_w + holds_w + val_w * len(run.runs) + 60
    top = max(s.address + s.slot.size for s in run.slots)
    head = LINE_H + 6
    parts = [_text(label_w + 4, FONT + 2, "holds", holds_w, "head")]
    for i, r in enumerate(run.runs):
        parts.append(_text(label_w + holds_w + 8 + val_w * i, FONT + 2, f"at {r.name}", val_w,
                           "head", f"the value while {r.kind} program {r.name} ran"))
    for s in run.slots:
        y = head + (top - s.address - s.slot.size) / 8 * SLOT_H
        h = s.slot.size / 8 * SLOT_H
        tip = (f"{s.address:#x} ({slot_offset(s.slot)}, ctx{s.slot.ctx_offset:+d}): "
               f"{s.slot.holds}. {s.slot.note}")
        parts.append(f'<g class="slot" data-kind="{s.slot.kind}" '
                     f'data-offset="{s.slot.offset}" data-holds="{escape(s.slot.holds)}">'
                     + _text(label_w - 4, y + h / 2 + 4, slot_offset(s.slot), label_w, "off")
                     + f'<rect x="{label_w}" y="{y:.1f}" width="{holds_w}" height="{h:.1f}" '
                     f'fill="{KIND_COLOURS[s.slot.kind]}" stroke="#555"><title>'
                     f'{escape(tip)}</title></rect>'
                     + _text(label_w + 4, y + h / 2 + 4, s.slot.holds, holds_w - 8, "", tip))
        for i, v in enumerate(s.values):
            parts.append(_text(label_w + holds_w + 8 + val_w * i, y + h / 2 + 4, value_text(v),
                               val_w - 8, "val"))
        if s.slot.ctx_offset == 0:
            parts.append(_text(w - 56, y + h / 2 + 4, "\u2190 ctx", 56, "mark"))
        parts.append("</g>")
    height = head + (top - min(s.address for s in run.slots)) / 8 * SLOT_H + 4
    return _svg(w, height, "".join(parts), "frame")
