"""One registry style for every extension point (tower families, enhance methods, eval benchmarks).

An entry registers itself with a decorator when its module is imported; the registry imports
every module of its package (pkgutil over the package's `__path__`) before it answers a look-up.
So adding an entry takes one new module in that package and no list to edit. An unknown name is
an `UnknownNameError` that lists the known names.

    FAMILIES = Registry("tower family", "llava_plugin.families", plural="families")
    FAMILIES.add("hf_clip", family)      # what a module's decorator does on import
    FAMILIES.get("hf_clip")              # imports the package's modules first, then looks up

Modules whose name starts with "_" and the names in `skip` (the package's contract module,
e.g. `base`) are not imported by discovery.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Generic, TypeVar

from llava_plugin.errors import GenfeedbackError

T = TypeVar("T")


class UnknownNameError(GenfeedbackError, KeyError):
    """A name no entry of the registry has; the message lists the known names. A KeyError, so
    callers that look names up in a dict-like way keep working; `str()` is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Name -> entry, filled by the modules of `package` as they are imported."""

    def __init__(self, kind: str, package: str, *, plural: str | None = None,
                 skip: tuple[str, ...] = ("base",)):
        self.kind = kind  # what an entry is, for messages: "tower family", "method", "benchmark"
        self.plural = plural or kind + "s"
        self.package = package  # dotted name of the package whose modules register entries
        self.skip = skip
        self._entries: dict[str, T] = {}
        self._discovering = False

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name` (what a decorator calls); a second entry of one name is an error."""
        if not name:
            raise ValueError(f"a {self.kind} needs a non-empty name")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def discover(self) -> None:
        """Import every module of the package (each registers its entries on import); modules
        already imported are not run again, so this is cheap after the first call."""
        if self._discovering:  # a module being imported looked something up: it sees what is there so far
            return
        self._discovering = True
        try:
            package = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(package.__path__):
                if info.name.startswith("_") or info.name in self.skip:
                    continue
                importlib.import_module(f"{self.package}.{info.name}")
        finally:
            self._discovering = False

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries[name]

    def unknown(self, name: str) -> UnknownNameError:
        """The error for a name the registry does not have (raise it; `args[0]` is the message)."""
        return UnknownNameError(f"unknown {self.kind} {name!r}; known {self.plural}: {self.names()}")

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self.discover()
        return sorted(self._entries.items())

    def values(self) -> list[T]:
        return [entry for _, entry in self.items()]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.package!r}, entries={sorted(self._entries)})"
