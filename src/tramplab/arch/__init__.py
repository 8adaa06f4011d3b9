"""The port registry.  An arch is a `Port` (arch/base.py) registered with `register_port`:
the built-in ones by arch/<name>/port.py, others by any package, found through the
`tramplab.ports` entry-point group or imported by the user before use.

    get_arch("aarch64")         # -> the arm64 ArchInfo (aliases are data in each abi.py)
    get_port("arm64").timeline  # everything else the arch knows
    ports()                     # every registered port, in table order
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib import metadata

from ..errors import UsageError
from .base import ArchInfo, Port

_PORTS: dict[str, Port] = {}
_discovered = False


def register_port(port: Port) -> Port:
    """Make an arch known.  Registering the same name again replaces it (a reload)."""
    if not isinstance(port, Port):
        raise UsageError(f"register_port wants a Port, not {type(port).__name__}")
    for other in _PORTS.values():
        clash = {port.name, *port.info.aliases} & {other.name, *other.info.aliases}
        if other.name != port.name and clash:
            raise UsageError(f"port {port.name}: name/alias {sorted(clash)} already used by "
                             f"{other.name}")
    _PORTS[port.name] = port
    return port


def unregister_port(name: str) -> None:
    _PORTS.pop(name, None)


def _discover() -> None:
    """Import the built-in ports (every subpackage with a `port` module), then the ones other
    packages announce under the `tramplab.ports` entry-point group."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg and importlib.util.find_spec(f"{__name__}.{info.name}.port") is not None:
            importlib.import_module(f"{__name__}.{info.name}.port")
    for ep in metadata.entry_points(group="tramplab.ports"):
        ep.load()


def ports() -> list[Port]:
    _discover()
    return sorted(_PORTS.values(), key=lambda p: (p.order, p.name))


def port_names() -> tuple[str, ...]:
    return tuple(p.name for p in ports())


def all_arches() -> list[ArchInfo]:
    return [p.info for p in ports()]


def get_port(name: str | ArchInfo | Port) -> Port:
    """Look a port up by its arch name or any alias, case-insensitively."""
    if isinstance(name, Port):
        return name
    if isinstance(name, ArchInfo):
        name = name.name
    port = _PORTS.get(name) if _discovered and isinstance(name, str) else None
    if port is not None and name == name.strip().lower():
        return port               # a port's own name (no other port has it as an alias)
    key = str(name).strip().lower()
    for port in ports():
        if key == port.name or key in port.info.aliases:
            return port
    known = ", ".join(f"{p.name} ({', '.join(p.info.aliases)})" for p in ports())
    raise UsageError(f"unknown arch {name!r}; known: {known}")


def get_arch(name: str | ArchInfo | Port) -> ArchInfo:
    """The ArchInfo of an arch given by name, alias, ArchInfo or Port."""
    if isinstance(name, ArchInfo):
        return name
    return get_port(name).info


def arch_module(arch: str | ArchInfo | Port, module: str):
    """The arch-specific implementation module <port package>.<module>."""
    return get_port(arch).module(module)


def check_implements(arch: str, package: str, what: str) -> Port:
    """The port of `arch`, which must use the implementations in `package` (a JIT given a spec
    for another ISA refuses it)."""
    port = get_port(arch)
    if port.package != package:
        raise UsageError(f"{what} of {package} given work for {port.name}, whose code is in "
                         f"{port.package}")
    return port


def __getattr__(name: str):
    if name == "ARCH_NAMES":          # the registered arches, in table order
        return port_names()
    raise AttributeError(name)
