"""``caviar report``: one self-contained HTML page (PNG plots inlined as base64) about a sweep.

Everything comes from the sweep's Parquet tables; nothing is recomputed by training.
Plots, each with an ``id`` so tests and people can find it:

- ``fig-hyperparameters``: the validation metric against every searched hyperparameter,
  on the scale it was sampled in (log axes for log ranges; momentum-like betas on a
  ``1 - beta`` log axis), with each stage's range shaded and drawn as a bar so that
  narrowing and edge extension show;
- ``fig-learning-curves``: validation metric per epoch, pruned trials grey (reasons in the legend);
- ``fig-gap``: train minus validation accuracy (or validation minus train loss, both in the targets'
  original units: ``train_loss_original``, never the standardised ``train_loss``) per epoch;
- ``fig-update-ratio``: ``||dw|| / ||w||`` per epoch against CS231n's 1e-3, and per layer
  for the best trial when diagnostics were recorded;
- ``fig-activations``: activation std and fraction of zeros (dead ReLUs) per layer of the best trial;
- ``fig-importance``: hyperparameter importance, fANOVA-style: a random forest (scikit-learn)
  fitted on the widest stage's trials, unit-cube coordinates to score; a parameter's
  importance is the variance of its partial-dependence curve (its main effect, the
  others averaged over the observed trials) divided by the variance of the forest's
  predictions. What the main effects leave unexplained is interaction;
- ``fig-ensembles``: the ensembles table, when the sweep has one.

Warnings come from the events table (``report_data.EDGE_KINDS``: ``value_fails``, the edge events, ``sweep_aborted``,
``no_trial_learned``), the failed trials' errors, and the diagnostics of the best trial.
matplotlib (Agg, no pyplot) and scikit-learn load only when a report is built.
"""

from __future__ import annotations

import base64
import html
import multiprocessing
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from orchestrator.app.answer import active_config
from orchestrator.app.report_data import SweepData, collect_warnings, importance, read_sweep
from orchestrator.app.report_figures import (
    Figure,
    gap_missing_reason,
    plot_activations,
    plot_ensembles,
    plot_gap,
    plot_hyperparameters,
    plot_importance,
    plot_learning_curves,
    plot_update_ratio,
)
from orchestrator.app.tables import SweepTables
from orchestrator.decide.interrupt import die_with_parent
from orchestrator.errors import StorageError
from orchestrator.search.space import shown_value
from orchestrator.spec.settings import ray_joined
from orchestrator.store.storage import Storage


@dataclass
class SweepReport:
    html: str
    figures: list[Figure]
    skipped: dict[str, str] = field(default_factory=dict)  # figure id -> why it is missing
    warnings: list[str] = field(default_factory=list)



# -- the page ------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1150px;color:#222}
h1{font-size:1.6em;margin-bottom:4px} h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#555} .warn{background:#fff4e5;border-left:4px solid #f0a020;padding:8px 14px}
.warn li{margin:3px 0} figure{margin:12px 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em;margin-top:4px} table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f6f6f6}
.skipped{color:#777;font-size:.9em}
"""


def render_html(data: SweepData, figures: Sequence[Figure], skipped: Mapping[str, str], warnings: Sequence[str]) -> str:
    esc = html.escape
    counts = Counter(t["status"] for t in data.trials)
    best = data.best()
    status = ", ".join(f"{n} {esc(k)}" for k, n in sorted(counts.items()))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>caviar report: {esc(data.name)}"
             f"</title><style>{CSS}</style></head><body><h1>caviar report: {esc(data.name)}</h1>",
             f"<p class='meta'>task {esc(data.task)} &middot; {len(data.trials)} trials in "
             f"{len(data.stage_spaces)} stages &middot; {status}</p>"]
    if best is not None:
        config = ", ".join(f"{esc(k)}={esc(_fmt(v))}" for k, v in active_config(best.get("config")).items())
        parts.append(f"<p>Best trial <b>{best['trial_id']}</b> (stage {best['stage']}, epoch "
                     f"{best['best_epoch']}): {esc(data.metric_name)} <b>{_fmt(data.value(best))}</b> &middot; "
                     f"{config}</p>")
    parts.append("<h2 id='warnings'>Warnings</h2>")
    if warnings:
        parts.append("<ul class='warn'>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>")
    else:
        parts.append("<p>None: no best value sat on the edge of its range, and the diagnostics look healthy.</p>")
    for fig in figures:
        data_uri = base64.b64encode(fig.png).decode("ascii")
        parts.append(f"<h2>{esc(fig.title)}</h2><figure id='{fig.id}'><img id='img-{fig.id}' alt='{esc(fig.title)}' "
                     f"src='data:image/png;base64,{data_uri}'><figcaption>{esc(fig.caption)}</figcaption></figure>")
    if skipped:
        parts.append("<p class='skipped'>Not shown: " + "; ".join(f"{esc(k)} ({esc(v)})" for k, v in skipped.items())
                     + "</p>")
    parts.append(top_table(data))
    parts.append("</body></html>")
    return "\n".join(parts)


def top_table(data: SweepData, k: int = 10) -> str:
    esc = html.escape
    if not data.trials:
        return ""
    rows = data.tables.top(k).to_pylist()
    if not rows:
        return ""
    names = list(data.space.searched)
    head = "".join(f"<th>{esc(h)}</th>" for h in ["trial", "stage", "status", "epochs", data.metric_name, *names])
    body = []
    for t in rows:
        cells = [t["trial_id"], t["stage"], t["status"] + (f" ({t['reason']})" if t["status"] == "pruned" else ""),
                 t["epochs_run"], _fmt(data.value(t)), *[_fmt((t.get("config") or {}).get(n)) for n in names]]
        body.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    return f"<h2>Top {len(rows)} trials</h2><table><tr>{head}</tr>{''.join(body)}</table>"


def _fmt(value: Any) -> str:
    return "-" if value is None else shown_value(value, 4)


# -- entry point -----------------------------------------------------------------------------------


def build_report(sweep_path: str, tables: SweepTables | None = None, workers: int | None = None) -> SweepReport:
    """Read the sweep and draw every plot its tables allow; missing tables skip their plot, with a reason.

    ``tables``: the sweep already loaded; ``workers``: processes drawing the plots (default: one per CPU, see
    :func:`draw_all`).
    """
    data = read_sweep(sweep_path, tables)
    figures: list[Figure] = []
    skipped: dict[str, str] = {}
    ranking = importance(data)
    order = sorted(ranking[0], key=lambda n: -ranking[0][n]) if ranking else []
    plots = [  # the slowest first: it starts at once while the others share the remaining processes
        ("fig-hyperparameters", partial(plot_hyperparameters, order=order), "the space searches no parameter"),
        ("fig-learning-curves", plot_learning_curves, "no metrics recorded yet"),
        ("fig-update-ratio", plot_update_ratio, "no update ratios recorded"),
        ("fig-activations", plot_activations, "no diagnostics table"),
        ("fig-gap", plot_gap, gap_missing_reason(data)),
        ("fig-ensembles", plot_ensembles, "no ensembles table"),
    ]
    *drawn, (figure, why) = draw_all([plot for _, plot, _ in plots] + [partial(plot_importance, result=ranking)],
                                     data, workers)
    for (fig_id, _, reason), result in zip(plots, drawn, strict=True):
        if result is None:
            skipped[fig_id] = reason
        else:
            figures.append(result)
    if figure is None:
        skipped["fig-importance"] = why
    else:
        figures.insert(1, figure)
    warnings = collect_warnings(data)
    return SweepReport(render_html(data, figures, skipped, warnings), figures, skipped, warnings)


def draw_all(plots: Sequence[Callable[[SweepData], Any]], data: SweepData, workers: int | None = None) -> list[Any]:
    """Each plot's result for ``data``, in order; drawn in forked processes when this machine has CPUs to spare.

    matplotlib draws in Python, on one core, and the plots are independent: on N cores a report takes about
    its slowest plot's time instead of the sum (a 256-trial sweep's report spent most of its 10 s drawing).
    Children are forked (Linux), so they inherit the data and matplotlib already imported, and send back
    PNG bytes. Not in a process that joined Ray: forking its threads (gRPC) is not safe.
    """
    if workers is None:
        from joblib import cpu_count  # the CPU quota of a container too, not only the affinity mask

        workers = int(cpu_count())
    workers = min(workers, len(plots))
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods() or ray_joined():
        return [plot(data) for plot in plots]
    import matplotlib.backends.backend_agg  # noqa: F401  imported once, here, not in every child

    global _DRAWING
    _DRAWING = (plots, data)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:  # a killed report helper takes them along
            return list(pool.map(_draw_one, range(len(plots))))
    finally:
        _DRAWING = None


_DRAWING: tuple[Sequence[Callable[[SweepData], Any]], SweepData] | None = None  # what forked children draw


def _draw_one(index: int) -> Any:
    assert _DRAWING is not None
    plots, data = _DRAWING
    return plots[index](data)


def write_report(report: SweepReport, out: str, png_dir: str | None = None) -> list[str]:
    """The page (and each plot as ``<id>.png`` under ``png_dir``), written atomically; returns the paths."""
    try:
        target = Storage.from_uri(posixpath.dirname(out) or ".")
        target.write_bytes(posixpath.basename(out), report.html.encode("utf-8"))
    except OSError as exc:  # a folder that cannot hold it (/proc, read-only, no permission): one line, not a traceback
        raise StorageError(f"--out {out}: the report cannot be written there ({_os_reason(exc)}); give a writable "
                           f"file path") from None
    written = [target.path(posixpath.basename(out))]
    if png_dir:
        try:
            pngs = Storage.from_uri(png_dir)
            for fig in report.figures:
                pngs.write_bytes(f"{fig.id.removeprefix('fig-')}.png", fig.png)
                written.append(pngs.path(f"{fig.id.removeprefix('fig-')}.png"))
        except OSError as exc:
            raise StorageError(f"--png-dir {png_dir}: the plots cannot be written there ({_os_reason(exc)}); the "
                               f"report itself is at {written[0]}; give a writable folder") from None
    return written


def _os_reason(exc: OSError) -> str:
    """The cause alone: pyarrow's text names its temporary file ('/proc/.x.tmp-7d27b390'), not the path asked for."""
    detail = str(exc.strerror or exc).rsplit("Detail: ", 1)[-1]
    return detail.removeprefix(f"[errno {exc.errno}] ").strip() or type(exc).__name__
