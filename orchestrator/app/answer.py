"""What a finished sweep tells its user: the chosen ensemble against the best single model, how to load it.

Pure formatting of the sweep's tables (the ensembles table, the trials table); no Ray, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.search.space import shown_value
from orchestrator.store import schema
from orchestrator.store.storage import Storage, redact_uri


def active_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The parameters a trial used: an inactive conditional one is None and says nothing."""
    return {k: v for k, v in (config or {}).items() if v is not None}


def format_value(value: Any) -> str:
    return shown_value(value)


def format_config(config: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in active_config(config).items())


def shown_score(score: float, objective: tuple[str, str] | None) -> tuple[str, float]:
    """``("val_mse", 0.1669)`` for a score of -0.1669 when the sweep minimised ``val_mse``: a trial's score as the
    objective it stands for (``score`` is the objective, negated when minimised); ``("score", score)`` when the
    objective is unknown."""
    if objective is None or not objective[0]:
        return "score", score
    name, mode = objective
    return name, -score if mode == "min" else score


def sweep_objective(storage: Storage) -> tuple[str, str] | None:
    """The sweep's objective and mode (orchestrator.store.sweeps.sweep_objective); None: a sweep from before either
    was stored, none of whose trials wrote yet."""
    from orchestrator.store.sweeps import sweep_objective as stored

    return stored(storage)


def error_change(single_accuracy: float | None, accuracy: float | None) -> float | None:
    """Relative change of the test error against the best single model (-0.25 = a quarter fewer errors)."""
    if single_accuracy is None or accuracy is None or single_accuracy >= 1.0:
        return None
    return (1.0 - accuracy) / (1.0 - single_accuracy) - 1.0


def mse_change(single_mse: float | None, mse: float | None) -> float | None:
    """Relative change of the test MSE against the best single model's."""
    if single_mse is None or mse is None or single_mse <= 0.0:
        return None
    return mse / single_mse - 1.0


def describe_members(members: Sequence[Any], limit: int = 6) -> str:
    """``trial 12 epoch 20, trial 7 epoch 18 (EMA), ...``: 1-based trials and epochs as in the tables."""
    parts = [f"trial {m.key.trial_id} epoch {m.key.epoch}" + (" (EMA)" if m.key.weights == "ema" else "")
             for m in members[:limit]]
    if len(members) > limit:
        parts.append(f"... {len(members) - limit} more")
    return ", ".join(parts)


def is_nan(value: float | None) -> bool:
    return value is not None and math.isnan(value)


def shown_number(value: float | None, spec: str = ".4f") -> str:
    """A table cell: ``-`` for no value, ``NaN`` for a task metric's NaN (never Python's ``nan``).

    Four decimals, or four significant digits where those would show less than two: a regression in metres has an
    MSE of 3e-08, which four decimals print as 0.0000 for every trial and ensemble. From 1e8 up, six significant
    digits: an MSE of targets near 1e20 printed 40 digits, its magnitude uncountable at a glance."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "NaN"
    if spec == ".4f" and abs(value) >= LARGE:
        return format(value, ".6g")
    return format(value, ".4g" if spec == ".4f" and 0 < abs(value) < 0.01 else spec)


LARGE = 1e8  # where four decimals give 13 or more characters, most of them float rounding


def nan_objective_note(name: str, val_nan: bool = True, test_nan: bool = False) -> str:
    """Said under a NaN in the objective's rows: the number is the task's metric's, never a score to trust. Names the
    split it came from: a NaN on test only (a ROC AUC on a test split without positives) ranked nothing."""
    test = name.replace("val_", "test_", 1)
    if not val_nan:
        return (f"  NaN: the task's metrics returned NaN for {test} on the test predictions (a class the test split "
                "lacks, or a precision or F1 over a class never predicted?); make it return a number")
    both = f"{name} and {test}" if test_nan else name
    return (f"  NaN: the task's metrics returned NaN for {both} on these predictions (a precision or F1 over a class "
            "never predicted?), so it ranks nothing there; make it return a number")


EDGE_EVENTS = ("range_extended", "edge_at_hard_limit", "edge_not_extended")


def edge_lines(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per range moved past (or held at) an edge: stage, trial, value, old and new range."""
    return [f"edge: {e['reason']}" for e in events if e["kind"] in EDGE_EVENTS and e["reason"]]


def _chosen_by(record: Any) -> str:
    """`` log loss`` from the row's detail (``val_log_loss``); nothing for rows written before it was stored."""
    column = record.detail.get("chosen_by")
    return f" {column.removeprefix('val_').replace('_', ' ')}" if column else ""


def ensemble_lines(sweep_uri: str, task_ref: str | None = None) -> list[str]:
    """The answer block: chosen ensemble, its scores next to the best single model's, the load line."""
    from orchestrator.ensemble.ensemble_run import read_ensembles

    storage = Storage.from_uri(sweep_uri)
    if not storage.exists(schema.ENSEMBLES_PATH):
        from orchestrator.ensemble.ensemble_run import predictions_off

        if schema.read_dataset_row(storage).get("kind") == "custom":
            return best_checkpoint_lines(storage, sweep_uri, task_ref)
        if predictions_off(storage):
            return best_checkpoint_lines(storage, sweep_uri, task_ref,
                                         why='prediction_dtype = "none" (no trial stored predictions)')
        return []
    records = read_ensembles(storage)
    chosen = next((r for r in records if r.chosen), None)
    single = next((r for r in records if r.method == "single"), None)
    if chosen is None:
        return []

    num = shown_number
    lines = [f"Chosen ensemble: {chosen.name} ({chosen.method}, {chosen.size} member"
             f"{'s' if chosen.size != 1 else ''}: {describe_members(chosen.members)}); chosen on validation"
             f"{_chosen_by(chosen)}, test measured once after"]
    if chosen.detail.get("choice_note"):  # the sweep's objective was a task metric: never claimed for the ensemble
        lines.append(f"  {chosen.detail['choice_note']}")
    rows = [(f"{chosen.name} (chosen)", chosen)]
    if single is not None and single is not chosen:
        rows.append(("best single model", single))
    regression = chosen.val_mse is not None
    if regression:  # in the targets' original units
        lines.append(f"  {'':<22} {'val MSE':>12} {'test MSE':>12}")
        lines += [f"  {label:<22} {num(r.val_mse):>12} {num(r.test_mse):>12}" for label, r in rows]
        change = mse_change(single.test_mse if single else None, chosen.test_mse)
        what = "test MSE"
    else:
        lines.append(f"  {'':<22} {'val accuracy':>12} {'val log loss':>12} {'test accuracy':>13} "
                     f"{'test log loss':>13}")
        lines += [f"  {label:<22} {num(r.val_accuracy):>12} {num(r.val_log_loss):>12} "
                  f"{num(r.test_accuracy):>13} {num(r.test_log_loss):>13}" for label, r in rows]
        change = error_change(single.test_accuracy if single else None, chosen.test_accuracy)
        what = "test error"
    if "val_objective" in chosen.detail:  # the objective that chose (a task metric): its values next to the rest
        name = str(chosen.detail.get("chosen_by", "objective"))
        lines.append(f"  {'':<22} {name:>12} {name.replace('val_', 'test_', 1):>12}")
        values = [(label, r.detail.get("val_objective"), r.detail.get("test_objective")) for label, r in rows]
        lines += [f"  {label:<22} {num(val):>12} {num(test):>12}" for label, val, test in values]
        val_nan, test_nan = (any(is_nan(v[i]) for _, *v in values) for i in (0, 1))
        if val_nan or test_nan:
            lines.append(nan_objective_note(name, val_nan, test_nan))
        change = None  # compared on the column that chose, not on accuracy or MSE
        ours, theirs = chosen.detail.get("test_objective"), single.detail.get("test_objective") if single else None
        if single is not chosen and ours is not None and theirs is not None:
            lines.append(f"  {name.replace('val_', 'test_', 1)} {num(ours)} against {num(theirs)} for the best "
                         "single model")
    if change is not None and single is not chosen:
        lines.append(f"  {what} {change:+.1%} relative to the best single model")
    elif single is chosen:
        lines.append("  the best single model won: no ensemble beat it on validation")
    return [*lines, load_line(sweep_uri, task_ref)]


def load_line(sweep_uri: str, task_ref: str | None) -> str:
    code = f'task="{task_ref}"' if task_ref else "trust_task_code=True"  # the code that builds it: named, never implied
    return (f'Load it: from orchestrator import load_ensemble; model = load_ensemble("{redact_uri(sweep_uri)}", '
            f'name="best", {code})')


def best_checkpoint_lines(storage: Storage, sweep_uri: str, task_ref: str | None,
                          why: str = 'kind = "custom" (outputs are the task\'s own)') -> list[str]:
    """The answer of a sweep without ensembles (a custom kind's outputs are the task's own; prediction_dtype "none"
    stored nothing to average): its best checkpoint and how to load it."""
    from orchestrator.ensemble.ensemble_run import best_checkpoint

    index = schema.read_dir(storage, "checkpoints", schema.CHECKPOINTS)
    best = best_checkpoint(index.to_pylist()) if index is not None else None
    if best is None:
        return []
    metrics = dict(best["metrics"] or [])
    values = ", ".join(f"{name} {shown_number(value)}" for name, value in metrics.items() if value is not None)
    weights = " (EMA)" if best["weights"] == "ema" else ""
    return [f"Best checkpoint: trial {best['trial_id']} epoch {best['epoch']}{weights}: {values}; no ensembles for "
            f"{why}", load_line(sweep_uri, task_ref)]
