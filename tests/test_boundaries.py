"""Modules talk through public methods: no code reaches into another object's private
attributes (`ft._run(...)`, `prog._active`), so each part can change its insides freely."""
import ast
from pathlib import Path

import tramplab

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


def _everywhere(check) -> list[str]:
    return [hit for path in sorted(SRC.rglob("*.py")) for hit in check(path)]


def test_no_module_uses_another_objects_private_attributes():
    found = _everywhere(_private_reach_ins)
    assert not found, "\n".join(found)
