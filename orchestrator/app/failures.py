"""Why trials failed, in a few lines: the most common errors with counts and trial ids.

The trials table keeps each failed trial's full traceback (``error``); the run summary and
``caviar status`` show these lines so a partial failure is never silent. Pure: rows in, lines out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from orchestrator.errors import exception_line
from orchestrator.search.space import shown_value

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_CAVIAR_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), name) + os.sep
    for name in ("orchestrator", "worker", "cluster")
)


def error_key(error: str | None, reason: str | None) -> str:
    """``ValueError: message (task.py:12)`` from a traceback: its last line and the user's innermost frame."""
    if not (error or "").strip():
        return f"reason {reason or 'unknown'}"
    last = " ".join(exception_line(error or "").split())
    user = [
        (path, line)
        for path, line in _FRAME.findall(error or "")
        if "site-packages" not in path and not os.path.abspath(path).startswith(_CAVIAR_DIRS)
    ]
    return f"{last} ({os.path.basename(user[-1][0])}:{user[-1][1]})" if user else last


# Errors whose cure is known, and what to do (matched on the error line).
HINTS = (
    ("Expected more than 1 value per channel when training",
     "batch norm met a training batch of one example: give your train loader drop_last=True"),
    ("out of memory", "lower batch_size, or give each trial a larger GPU share (gpus_per_trial)"),
)


def hint_for(key: str) -> str | None:
    return next((hint for text, hint in HINTS if text.lower() in key.lower()), None)


# A number in an error line: the value one trial drew ("got -0.1245"), which should not split a group
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _ids(ids: list[int], shown: int = 8) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return f"{text}, ... ({len(ids) - shown} more)" if len(ids) > shown else text


def past_declared_ranges(failed: Sequence[Mapping[str, Any]], ended: Sequence[Mapping[str, Any]],
                         declared: Mapping[str, Any]) -> str | None:
    """What to do when every one of ``failed`` (config dicts) drew a parameter past the same side of its declared
    range (``declared``: the sweep row's space as plain data) and no trial that ended with a score (``ended``) went
    that far: a later stage extended the range past an edge, into values the model cannot take (more pooling
    blocks than the images have pixels). None when no parameter says so."""
    suspects = []
    for name, spec in declared.items():
        if not (isinstance(spec, Mapping) and _number(spec.get("low")) and _number(spec.get("high"))):
            continue  # a choice or a fixed value: never extended
        low, high = spec["low"], spec["high"]
        drawn = [c.get(name) for c in failed]
        trained = [c.get(name) for c in ended if _number(c.get(name))]
        if not (drawn and all(_number(v) for v in drawn)):
            continue
        if all(v > high for v in drawn) and not any(v >= min(drawn) for v in trained):
            suspects.append((name, low, high, drawn))
        elif all(v < low for v in drawn) and not any(v <= max(drawn) for v in trained):
            suspects.append((name, low, high, drawn))
    if not suspects:
        return None
    shown = suspects[:3]
    said = " and ".join(f"{name} = {', '.join(shown_value(v) for v in sorted(set(drawn))[:4])} "
                        f"(declared [{shown_value(low)}, {shown_value(high)}])" for name, low, high, drawn in shown)
    limits = " and ".join(f"limits=({shown_value(low)}, {shown_value(high)}) to {name}" for name, low, high, _ in shown)
    return (f"these trials drew {said}, past the declared range{'s' if len(shown) > 1 else ''}, which a later stage "
            f"extended from an edge: if the model cannot take such values, give {limits} in the task, or set "
            "extend_edges = false")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def error_summary(trials: Iterable[Mapping[str, Any]], top: int = 3,
                  declared: Mapping[str, Any] | None = None) -> list[str]:
    """One line per most common error among failed trials (count, error, trial ids); empty when none failed.

    Errors that differ only in their numbers (each trial's own drawn value) are one group, shown with its first
    trial's line. ``declared``, the sweep's declared space as plain data, lets a group whose trials all drew a
    parameter past its declared range say so (:func:`past_declared_ranges`).
    """
    trials = list(trials)
    configs = {int(t["trial_id"]): t.get("config") or {} for t in trials}
    ended = [configs[int(t["trial_id"])] for t in trials if t.get("status") in ("completed", "pruned")]
    groups: dict[str, list[tuple[int, str]]] = {}
    for t in trials:
        if t.get("status") == "failed":
            key = error_key(t.get("error"), t.get("reason"))
            groups.setdefault(_NUMBER.sub("#", key), []).append((int(t["trial_id"]), key))
    ordered = sorted(groups.values(), key=lambda members: (-len(members), min(members)))
    lines = []
    for members in ordered[:top]:
        members.sort()
        ids, key = [i for i, _ in members], members[0][1]
        differ = "; the numbers in the error differ between them" if len({k for _, k in members}) > 1 else ""
        lines.append(f"{len(ids)} failed: {key} (trial{'s' if len(ids) > 1 else ''} {_ids(ids)}{differ})")
        hint = hint_for(key)
        if hint:
            lines.append(f"  what to do: {hint}")
        extended = past_declared_ranges([configs[i] for i in ids], ended, declared) if declared else None
        if extended:
            lines.append(f"  what to do: {extended}")
    if len(ordered) > top:
        rest = sum(len(members) for members in ordered[top:])
        lines.append(f"{rest} more failed with {len(ordered) - top} other errors")
    if lines:
        lines.append("(each failed trial's traceback: the 'error' column of trials/trials.parquet)")
    return lines
