"""Plug-ins known by name: one registry per concept (pruners, samplers, stage policies).

Each registry maps a name to a class, is filled by its class decorator (``@register_pruner("mine")``)
and names a chosen class the way the sweep row records it: the registered name, else the import path.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from orchestrator.errors import CaviarError, ConfigError

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


_CAVIAR_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # orchestrator/


@contextmanager
def plugin_code(kind: str, name: str, plugin: object, method: str, when: str) -> Iterator[None]:
    """A user's plug-in that raises inside ``method``: one line naming it, the method, the line of the user's code and
    ``when`` (the traceback stays chained for the Python API), so ``caviar run`` says what failed instead of a
    traceback through caviar's controller. caviar's own plug-ins raise as they are: a failure there is caviar's."""
    try:
        yield
    except CaviarError:
        raise
    except Exception as exc:
        if type(plugin).__module__.startswith("orchestrator."):
            raise
        message = " ".join(str(exc).split()) or "(no message)"
        raise ConfigError(f"{kind} {name!r}: {method} raised {type(exc).__name__}: {message} "
                          f"({_user_line(exc)}), {when}") from exc


def _user_line(exc: BaseException) -> str:
    """``file.py:LINE`` of the innermost frame outside caviar's orchestrator and installed packages."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if not path.startswith(_CAVIAR_DIR) and "site-packages" not in path:
            return f"{os.path.basename(path)}:{frame.lineno}"
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?"
