"""Conditions on search-space parameters: ``when={"optimizer": ["adam", "adamw"]}``.

A conditional parameter is active only when every parameter its condition names is active
and takes one of the listed values. These helpers check conditions and order parameters so
that parents are decided first; orchestrator.search.space applies them (distributions are
recognised by their ``when`` and ``options`` attributes, so this module needs no import of it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.errors import SpaceError

Condition = Mapping[str, Any] | None  # {"optimizer": ["adam", "adamw"]}: active only for those values


def normalize_condition(when: Condition) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """``{"optimizer": ["adam"]}`` (or a single value) as hashable pairs; structure errors raise TypeError."""
    if when is None:
        return ()
    if not isinstance(when, Mapping):
        raise TypeError(f"when must be a table of parameter = [values], got {type(when).__name__}")
    pairs = []
    for parent, values in when.items():
        if not isinstance(parent, str):
            raise TypeError(f"when: parameter names must be strings, got {parent!r}")
        if isinstance(values, (set, frozenset)):  # membership only; sorted, so the stored space reads the same each run
            values = sorted(values, key=repr)
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        pairs.append((parent, values))
    return tuple(pairs)


def condition_order(params: Mapping[str, Any]) -> list[str]:
    """Conditional parameters, each after the parameters its condition names; refuses unknown names,
    values a parent choice cannot take, parents that are not choices or fixed values, and cycles."""
    conditional = {k: v for k, v in params.items() if getattr(v, "when", ())}
    for name, dist in conditional.items():
        for parent, values in dist.when:
            if parent not in params:
                raise SpaceError(f"parameter '{name}': condition names unknown parameter '{parent}'")
            target = params[parent]
            if hasattr(target, "options"):  # a Choice
                bad = [v for v in values if v not in target.options]
                if bad:
                    raise SpaceError(
                        f"parameter '{name}': condition values {bad!r} are not options of '{parent}' "
                        f"({list(target.options)!r})"
                    )
            elif hasattr(target, "when"):  # any other distribution
                raise SpaceError(f"parameter '{name}': condition on '{parent}' needs a choice or a fixed value there")
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" while on the current path, "done" once placed

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join(path[path.index(name) :] + [name])
            raise SpaceError(f"parameter '{name}': conditions form a cycle ({cycle})")
        state[name] = "visiting"
        for parent, _ in conditional[name].when:
            if parent in conditional:
                visit(parent, path + [name])
        state[name] = "done"
        order.append(name)

    for name in conditional:
        visit(name, [])
    return order
