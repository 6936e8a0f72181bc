"""Plug-ins known by name: one registry per concept (pruners, samplers, stage policies).

Each registry maps a name to a class, is filled by its class decorator (``@register_pruner("mine")``)
and names a chosen class the way the sweep row records it: the registered name, else the import path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=type[Any])


class Registry(dict[str, type[T]], Generic[T]):
    """Name -> class for one kind of plug-in."""

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: the class is known by ``name`` to settings, TOML files and ``caviar run``'s option."""

        def add(cls: C) -> C:
            cls.name = name
            self[name] = cls
            return cls

        return add

    def name_of(self, cls: type[Any]) -> str:
        """How the sweep row records a class: its registered name, else its import path (``module.Class``)."""
        name = getattr(cls, "name", "")
        return name if self.get(name) is cls else f"{cls.__module__}.{cls.__qualname__}"
