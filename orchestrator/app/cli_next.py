"""``caviar next SWEEP``: the next sweep's ranges, closed around this sweep's best trials, as a TOML file that
``caviar run TASK --config FILE`` reads (coarse to fine across sweeps; orchestrator.search.next_sweep decides)."""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Annotated, Any

import typer

from orchestrator.app.cli_common import StorageOption, SweepArg, app, fail, find_sweep
from orchestrator.search.next_sweep import NextSweep
from orchestrator.search.space import Choice, Distribution, SearchSpace, param_to_dict, parse_param, shown_value

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@app.command("next")
def next_sweep(
    sweep: SweepArg,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write the TOML here (default: print it).")]
    = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
    storage: StorageOption = None,
) -> None:
    """The next sweep's ranges, closed around this sweep's best trials (past an edge the best sits on), as TOML
    for caviar run --config."""
    from orchestrator.app.resume import read_record, space_from_json
    from orchestrator.app.tables import open_sweep
    from orchestrator.decide.controller import judged
    from orchestrator.decide.status import SUCCEEDED
    from orchestrator.search.next_sweep import next_sweep_space

    if output is not None:
        refuse_output(output, overwrite)
    path = find_sweep(sweep, storage)
    found_storage = open_sweep(path)
    record = read_record(found_storage)
    settings = record.settings
    stage_spaces = [space_from_json(row["space"], f"stages (stage {row['stage'] + 1})") for row in record.stages]
    results = [[(t["config"], t["best_score"]) for t in judged([t for t in record.trials if t["stage"] == stage],
                                                               lambda t: (t["status"], t["reason"], t["best_score"]))]
               for stage in range(len(stage_spaces))]
    tried = [t["config"] for t in record.trials if t["status"] in SUCCEEDED]  # pruned ones were tried too
    found = next_sweep_space(record.space, stage_spaces, results, tried=tried, top_fraction=settings.top_fraction,
                             extend_edges=settings.extend_edges)
    if found is None:
        fail(f"sweep {record.sweep['name']!r}: no stage has three different configs that ended with a score"
             f"{nothing_yet(found_storage, path, record.trials)}")
    state = sweep_state(found_storage)
    unended = None if not state.startswith(("running", "stopped")) else unended_note(state, found.stage, record.trials)
    text = next_sweep_toml(found, record.space, record.sweep, record.trials, unended)
    if unended is not None:
        typer.secho(f"warning: sweep {record.sweep['name']!r} {unended}", fg="yellow", err=True)
    if output is None:
        typer.echo(text, nl=False)
        return
    partial = f"{output}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, output)  # whole or not at all: a config half written would run another sweep
    typer.echo(f"wrote {output}: caviar run {record.sweep['task']} --config {output}")


def nothing_yet(found: Any, path: str, trials: list[dict[str, Any]]) -> str:
    """The rest of the refusal of a sweep with no ranges to close, by its state: a running sweep may get there, a
    stopped one can be resumed, and an ended one never will (more trials, or trials that train, will)."""
    from orchestrator.app.tables import resume_command

    nothing = "so there is nothing to close the ranges around"
    state = sweep_state(found)
    if state.startswith("running") or state == "unfinished":
        return f" yet, {nothing}; let it run further (caviar status shows where it is)"
    if state.startswith("stopped"):
        return f", {nothing}; it stopped before its end, and {resume_command(found, path)} continues it"
    failed = sum(t["status"] == "failed" for t in trials)
    said = f"it ended ({state}) with {failed} of {len(trials)} trials failed, {nothing}; "
    return ": " + said + ("caviar status shows why they failed" if failed else
                          "a next sweep needs one whose stages score three configs or more")


def sweep_state(found: Any) -> str:
    """finished, aborted, running (process ...), stopped (...), or unfinished (a damaged lease), as caviar ls says."""
    from orchestrator.store.sweeps import listed_sweep

    return listed_sweep(found)["state"]


def unended_note(state: str, stage: int, trials: list[dict[str, Any]]) -> str:
    """What a next sweep's ranges of a sweep that has not ended rest on: a stage's trials so far."""
    in_stage = [t for t in trials if t["stage"] == stage]
    ended = sum(t["status"] in ("completed", "pruned", "failed") for t in in_stage)
    return (f"had not ended ({state.split(' (')[0]}): these ranges rest on stage {stage + 1}'s {ended} of "
            f"{len(in_stage)} trials ended so far; caviar next after its end closes them around its last stage")


def refuse_output(output: str, overwrite: bool) -> None:
    """One line, before any reading, for an --output that cannot be written as asked."""
    folder = os.path.dirname(output) or "."
    if os.path.isdir(output):
        fail(f"--output {output!r}: is a folder; name the file to write (-o {os.path.join(output, 'next.toml')})")
    if not os.path.isdir(folder):
        fail(f"--output {output!r}: no folder {folder!r} (create it first, or write the file elsewhere)")
    if os.path.exists(output) and not overwrite:
        fail(f"--output {output!r}: the file exists (pass --overwrite to replace it)")


def next_sweep_toml(found: NextSweep, declared: SearchSpace, sweep: dict[str, Any],
                    trials: list[dict[str, Any]], unended: str | None = None) -> str:
    """The ``[space]`` table: searched parameters, each with a comment saying where its range came from, then the
    sweep's fixed values."""
    stage = found.stage
    epochs = max((t["max_epochs"] for t in trials if t["stage"] == stage), default=0)
    lines = [
        f"# The next sweep after {sweep['name']} (task {sweep['task']}), by caviar next.",
        f"# Each range closes around the best {found.top} of stage {stage + 1}'s {found.judged} scored trials (up to "
        f"{epochs} epoch{'s' if epochs != 1 else ''} each),",
        "# inside what the sweep's stages searched, and moves past an edge its best value sat on; an option no best",
        "# trial used and that was tried 3 times or more is left out. Fixed values are the sweep's.",
        f"# Run it: caviar run {sweep['task']} --config THIS_FILE",
        *([f"# {sweep['name']} {unended}"] if unended else []),
        "[space]",
    ]
    edges = {(n.param, n.side): n for n in found.edges}
    left_out = never_drawn(found.space)
    for name, dist in found.space.searched.items():
        if name in left_out:
            lines.append(f"# {name}: left out, as no trial of these ranges uses it ({left_out[name]})")
            continue
        comment = origin(name, dist, declared, found.searched, edges, found.top_configs)
        lines.append(f"{toml_key(name)} = {toml_value(rounded_spec(name, dist))}  # {comment}")
    for name, value in found.space.fixed.items():
        # Written, not left to the task: a value the sweep's own --config fixed (hidden = 16 over the task's range)
        # would otherwise be searched again over the task's range, outside anything this sweep tried.
        lines.append(f"{toml_key(name)} = {toml_value(value)}  # fixed in {sweep['name']}" if value is not None else
                     f"# {name}: fixed to None in {sweep['name']}, as the task's")
    text = "\n".join(lines) + "\n"
    declared.with_overrides(tomllib.loads(text)["space"])  # it must load as caviar run will load it
    return text


def never_drawn(space: SearchSpace) -> dict[str, str]:
    """Parameters whose condition no kept option meets, each with why: a parent kept none of the options it names,
    or a parent is never drawn itself (a condition chained two deep: its child's range would be written, unused)."""
    why: dict[str, str] = {}
    changed = True
    while changed:  # parents may be declared after their children: until nothing more is left out
        changed = False
        for name, dist in space.searched.items():
            for parent, values in dist.when if name not in why else ():
                if not values:
                    why[name] = f"{parent} is one of {list(space[parent].options)!r}"
                elif parent in why:
                    why[name] = f"{parent} is left out"
                else:
                    continue
                changed = True
                break
    return why


def origin(name: str, dist: Distribution, declared: SearchSpace, searched: SearchSpace,
           edges: dict[tuple[str, str], Any], top: Sequence[Mapping[str, Any]]) -> str:
    """Where a parameter's next range came from, in a few words."""
    before = declared[name]
    if isinstance(before, Choice):
        dropped = [repr(o) for o in before.options if o not in dist.options]
        return _shown_best(name, top) + (f"; left out: {', '.join(dropped)}" if dropped else "")
    hull = searched[name]
    notes = [f"declared [{_shown(before.low)}, {_shown(before.high)}]"
             + (f", searched [{_shown(hull.low)}, {_shown(hull.high)}]" if hull != before else "")]
    for side in ("low", "high"):
        notice = edges.get((name, side))
        if notice is not None and notice.extended:
            notes.append(f"moved past the {side} edge: the best trial's {_shown(notice.value)} sat on it")
        elif notice is not None and notice.hard_limit:
            notes.append(f"the best trial's {_shown(notice.value)} sits on the {side} edge, a hard limit "
                         + ("(limits=)" if _own_limits(name, before) else "(of its kind: no limits= was written)"))
        elif notice is not None:  # the sweep ran with extend_edges = false, which this range keeps
            notes.append(f"the best trial's {_shown(notice.value)} sits on the {side} edge, not moved past "
                         "(extend_edges = false)")
    return "; ".join(notes if len(notes) > 1 else [*notes, _shown_best(name, top)])


def _own_limits(name: str, dist: Distribution) -> bool:
    """Whether the task (or a --config) wrote ``limits=``, rather than the kind's own (integers >= 1, dropout < 1)."""
    spec = param_to_dict(dist)
    return dist.limits != parse_param(name, {key: spec[key] for key in ("dist", "low", "high")}).limits


def _shown(value: Any) -> str:
    return shown_value(value, 4) if isinstance(value, float) else repr(value)


def _shown_best(name: str, top: Sequence[Mapping[str, Any]]) -> str:
    """The best trial's value; where it did not use the parameter (a condition), how many of the best did: with fewer
    than three the range stays as searched."""
    value = top[0].get(name) if top else None
    if value is not None:
        return f"best {_shown(value)}"
    used = sum(config.get(name) is not None for config in top)
    if not used:
        return f"none of the best {len(top)} trials used it"
    return (f"the best trial did not use it; {used} of the best {len(top)} did"
            + (" (too few to close around: kept as searched)" if used < 3 else ""))


def rounded_spec(name: str, dist: Distribution) -> dict[str, Any]:
    """The range as plain data, bounds at 4 significant digits where that keeps it valid (else as they are), rounded
    outward: rounded to the nearest, a bound just past a best value (an edge kept by extend_edges = false or a limit)
    could move inside it, and the next sweep could never draw the value it closed around."""
    spec = param_to_dict(dist)
    if isinstance(dist, Choice) or not isinstance(spec.get("low"), float):
        return spec
    for digits in (4, 6):
        short = {**spec, "low": _outward(spec["low"], digits, ROUND_FLOOR),
                 "high": _outward(spec["high"], digits, ROUND_CEILING)}
        try:
            parsed = parse_param(name, short)
        except Exception:  # rounding reached a limit (a beta next to 1): keep the exact bound
            continue
        # In its sampling scale a digit of a beta near 1 is a decade (0.999987 down to 0.9999): keep such bounds
        moved = max(abs(parsed.scale_low - dist.scale_low), abs(parsed.scale_high - dist.scale_high))
        if moved <= 0.01 * (dist.scale_high - dist.scale_low):
            return short
    return spec


def _outward(value: float, digits: int, rounding: str) -> float:
    """``value`` at ``digits`` significant digits, rounded down (ROUND_FLOOR) or up (ROUND_CEILING): the nearest where
    that is on the right side (1e-06 is a hair above the float 1e-06, whose exact decimal is 9.99...e-07)."""
    nearest = float(f"{value:.{digits}g}")
    if value == 0 or not math.isfinite(value) or (nearest <= value if rounding == ROUND_FLOOR else nearest >= value):
        return nearest
    step = Decimal(1).scaleb(math.floor(math.log10(abs(value))) - digits + 1)
    return float(Decimal(value).quantize(step, rounding=rounding))


def toml_key(name: str) -> str:
    """A parameter's name as a TOML key: a Python identifier may hold letters TOML's bare keys do not (λ, β)."""
    return name if _BARE_KEY.fullmatch(name) else toml_string(name)


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes, letters as they are (λ, not \\u03bb), and DEL escaped, as TOML asks."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """TOML for the plain data a range holds (bools, numbers, strings, lists, inline tables); null limits are open."""
    if value is None:
        return "inf"  # only an open side of limits is null (param_to_dict); its sign comes from the list below
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and value[0] is None:  # limits = [null, 0.5]: open below
            return f"[-inf, {toml_value(value[1])}]"
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")
