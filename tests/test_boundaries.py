"""Modules talk through public methods: no code reaches into another object's private
attributes (`ft._run(...)`, `prog._active`), so each part can change its insides freely; and
errnos are returned by name, never as bare numbers."""
import ast
from pathlib import Path

import tramplab
from tramplab.errors import ERRNO

SRC = Path(tramplab.__file__).parent


def _private_reach_ins(path: Path) -> list[str]:
    """`x._name` where x is not self/cls (dunders are Python's, not private)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    return found


def _bare_errnos(path: Path) -> list[str]:
    """`return -16` and the like: a negative errno spelled as a number (1 is left out: -1 is
    also an ordinary "none" value)."""
    numbers = set(ERRNO.values()) - {1}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        value = node.value if isinstance(node, ast.Return) else None
        if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub) and \
                isinstance(value.operand, ast.Constant) and value.operand.value in numbers:
            found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    return found


def _everywhere(check) -> list[str]:
    return [hit for path in sorted(SRC.rglob("*.py")) for hit in check(path)]


def test_no_module_uses_another_objects_private_attributes():
    found = _everywhere(_private_reach_ins)
    assert not found, "\n".join(found)


def test_errnos_are_returned_by_name():
    found = _everywhere(_bare_errnos)
    assert not found, "\n".join(found)
