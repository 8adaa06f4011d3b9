"""Tables that fit the terminal: a table wider than the console is split into several, each
with the key columns repeated and as many other columns as fit, so that no cell is ever
narrower than its longest word (rich would otherwise cut cells to "v6…")."""
from __future__ import annotations

import os
import re
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

PIPED_WIDTH = 160        # piped output without COLUMNS: a wide page for logs and files
CELL_FRAME = 3           # a cell's padding (2) and its right border (1)
_MARKUP = re.compile(r"\[/?[a-z ]*\]")


def console_width() -> int | None:
    """None on a terminal (rich measures it); else COLUMNS if set, else PIPED_WIDTH."""
    if sys.stdout.isatty():
        return None
    try:
        return max(int(os.environ.get("COLUMNS", "")), 20)
    except ValueError:
        return PIPED_WIDTH


def _plain(cell: str) -> str:
    return _MARKUP.sub("", cell)


def min_width(cells: list[str]) -> int:
    """The narrowest a column may be: its longest word (words are never cut)."""
    return max((len(w) for c in cells for w in _plain(c).split()), default=1)


def natural_width(cells: list[str]) -> int:
    return max((len(line) for c in cells for line in _plain(c).splitlines() or [""]), default=1)


def column_groups(headers: list[str], rows: list[list[str]], width: int, keep: int = 1
                  ) -> list[list[int]]:
    """Column indexes per table: each starts with the first `keep` columns, then as many of
    the others, in order, as fit in `width` at their minimum widths."""
    cols = [[h] + [r[i] for r in rows] for i, h in enumerate(headers)]
    need = [min_width(c) + CELL_FRAME for c in cols]
    base = 1 + sum(need[:keep])                    # the left border and the key columns
    groups, current, used = [], [], base
    for i in range(keep, len(headers)):
        if current and used + need[i] > width:
            groups.append(list(range(keep)) + current)
            current, used = [], base
        current.append(i)
        used += need[i]
    if current or not groups:
        groups.append(list(range(keep)) + current)
    return groups


def widths(cols: list[list[str]], width: int) -> list[int]:
    """Content widths for columns that must fit `width`: each at least its longest word, the
    room left shared out towards each column's natural width, narrowest needs first.  Fixed
    here rather than left to rich, whose own shrinking may cut a cell below a word."""
    lo = [min_width(c) for c in cols]
    hi = [max(natural_width(c), m) for c, m in zip(cols, lo)]
    room = width - 1 - sum(m + CELL_FRAME for m in lo)
    out = list(lo)
    for i in sorted(range(len(cols)), key=lambda i: hi[i] - lo[i]):
        extra = max(min(hi[i] - lo[i], room), 0)
        out[i] += extra
        room -= extra
    return out


def print_table(con: Console, title: str, headers: list[str], rows: list[list[str]],
                keep: int = 1) -> None:
    """Print one table, or several narrower ones when it does not fit `con.width`."""
    groups = column_groups(headers, rows, con.width, keep)
    for n, group in enumerate(groups):
        part = f" ({n + 1}/{len(groups)})" if len(groups) > 1 else ""
        t = Table(title=title + part)
        cols = [[headers[i]] + [r[i] for r in rows] for i in group]
        for i, w in zip(group, widths(cols, con.width)):
            t.add_column(headers[i], width=w, overflow="fold")
        for r in rows:
            t.add_row(*(Text.from_markup(r[i]) for i in group))
        con.print(t)
