"""The plots of ``caviar report``, each a PNG with an id, title and caption (matplotlib Agg, no pyplot)."""

from __future__ import annotations

import io
import json
import math
import textwrap
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from orchestrator.app.answer import shown_number
from orchestrator.app.report_data import HEALTHY_UPDATE_RATIO, SweepData, diag_rows
from orchestrator.search.space import (
    Choice,
    LogRandInt,
    LogUniform,
    OneMinusLogUniform,
)

LOG_DISTS = (LogUniform, LogRandInt, OneMinusLogUniform)
DPI = 90
PRUNED_GREY = "#9a9a9a"


@dataclass
class Figure:
    id: str
    title: str
    caption: str
    png: bytes



# -- plotting helpers ------------------------------------------------------------------------


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def panel_grid(fig: Any, rows: int, cols: int) -> Any:
    """A grid of equal panels with margins fixed in inches, room for a two-line title, x label and tick labels.

    Constrained layout measures every tick label of every panel on each draw: on a grid of 15 or more
    panels that took most of a report's time, and panels of one size need no measuring.
    """
    width, height = fig.get_size_inches()
    left, right, top, bottom, col_gap, row_gap = 0.8, 0.15, 0.55, 0.95, 0.85, 1.15  # inches
    panel_w = (width - left - right - (cols - 1) * col_gap) / cols
    panel_h = (height - top - bottom - (rows - 1) * row_gap) / rows
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=col_gap / panel_w, hspace=row_gap / panel_h)
    return fig.subplots(rows, cols, squeeze=False).ravel()


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def stage_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.15 + 0.7 * i / max(n - 1, 1)) for i in range(max(n, 1))]


def layer_label(name: str) -> str:
    """A layer's name as a legend shows it: without torch.compile's ``_orig_mod.`` wrapper, and never with a leading
    underscore, which matplotlib takes as "leave out of the legend"."""
    name = name.replace("_orig_mod.", "")
    return name if not name.startswith("_") else name.lstrip("_") or name


def axis_value(dist: Any, value: Any) -> Any:
    """Where a value sits on its plot axis: ``1 - beta`` for momentum-like betas."""
    return 1.0 - float(value) if isinstance(dist, OneMinusLogUniform) else value


def stage_range(spec: Any) -> tuple[float, float] | None:
    """(low, high) on the plot axis of one stage's plain-data distribution; None for choices and fixed values."""
    if not isinstance(spec, Mapping) or "low" not in spec:
        return None
    low, high = float(spec["low"]), float(spec["high"])
    if spec.get("dist") == "one_minus_loguniform":
        low, high = 1.0 - high, 1.0 - low
    return low, high


# -- the plots -------------------------------------------------------------------------------


def plot_hyperparameters(data: SweepData, order: Sequence[str] = ()) -> Figure | None:
    """One panel per searched parameter, in ``order`` (most important first) when given."""
    searched = data.space.searched
    if not searched:
        return None
    # Without an importance ranking: continuous ranges first, then choices (the stored space is alphabetical).
    names = [n for n in order if n in searched] or sorted(searched, key=lambda n: isinstance(searched[n], Choice))
    params = {n: searched[n] for n in names + [n for n in searched if n not in names]}
    edge_params = {json.loads(e["detail"] or "{}").get("param") for e in data.events if e["kind"] == "edge_warning"}
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    fig = new_figure(4.2 * cols, 3.3 * rows + 0.4, layout=None)
    axes = panel_grid(fig, rows, cols)
    colors = stage_colors(len(data.stage_spaces))
    best = data.best()
    for ax, (name, dist) in zip(axes, params.items()):
        categorical = isinstance(dist, Choice)
        options = list(dist.options) if categorical else []
        if categorical:
            for spec in data.stage_spaces:
                options += [o for o in (spec.get(name) or {}).get("options", []) if o not in options]
        dots: dict[bool, list[tuple[float, float, Any]]] = {True: [], False: []}  # completed? -> (x, y, colour)
        for t in data.trials:
            value, y = (t.get("config") or {}).get(name), data.value(t)
            if value is None or y is None:  # None: inactive in this trial, nothing to plot
                continue
            if categorical:
                x = options.index(value) + _jitter(t["trial_id"]) if value in options else math.nan
            else:
                x = axis_value(dist, value)
            done = t["status"] == "completed"
            dots[done].append((x, y, colors[(t["stage"] - 1) % len(colors)] if done else PRUNED_GREY))
        for done, points in dots.items():  # one collection each: thousands of trials stay fast
            if points:
                xs, ys, cs = zip(*points)
                ax.scatter(xs, ys, s=22, c=list(cs), alpha=0.9 if done else 0.55, linewidths=0, zorder=3 if done else 2)
        if best is not None and (best.get("config") or {}).get(name) is not None:
            bv = best["config"][name]
            bx = options.index(bv) if categorical and bv in options else axis_value(dist, bv)
            ax.scatter([bx], [data.value(best)], s=160, marker="*", color="#d62728", zorder=4, label="best")
        if data.accuracy:
            ax.set_ylim(0.0, 1.02)  # every panel from 0, so panels compare at a glance
        if not categorical:
            _room_for_stage_bars(ax, len(data.stage_spaces))
            for stage, spec in enumerate(data.stage_spaces):
                span = stage_range(spec.get(name))
                if span is None:
                    continue
                color = colors[stage % len(colors)]
                ax.axvspan(*span, color=color, alpha=0.10, zorder=1)
                # A bar per stage along the bottom: narrowing and edge extension read left to right.
                ax.plot(span, [0.03 + 0.05 * stage] * 2, transform=ax.get_xaxis_transform(), color=color, lw=4,
                        solid_capstyle="butt", zorder=2, label=f"stage {stage + 1} range")
        if isinstance(dist, LOG_DISTS):
            ax.set_xscale("log")
            _sparse_minor_ticks(ax)
        if isinstance(dist, LogRandInt):  # plain integers (16, 32, 64) read better than 2x10^1
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        if categorical:
            ax.set_xticks(range(len(options)), [str(o) for o in options], rotation=25 if len(options) > 3 else 0)
        label = f"1 - {name}" if isinstance(dist, OneMinusLogUniform) else name
        ax.set_xlabel(label + (" (log)" if isinstance(dist, LOG_DISTS) else ""))
        ax.set_ylabel(data.metric_name)
        title = name + ("  (best at an edge!)" if name in edge_params else "")
        if dist.when:  # conditional: dots are the trials where it was active; the others had no value (None)
            when = "; ".join(f"only when {p} in {', '.join(map(str, v))}" for p, v in dist.when)
            title += "\n" + textwrap.fill(when, 46)  # a panel's width: the fixed grid does not make room
        ax.set_title(title, color="#b00020" if name in edge_params else "black", fontsize=11)
        ax.grid(alpha=0.25)
    for ax in axes[len(params):]:
        ax.set_visible(False)
    unique: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            unique.setdefault(label, handle)
    if unique:
        fig.legend(unique.values(), unique.keys(), loc="lower center", bbox_to_anchor=(0.5, 0.0),
                   ncols=min(len(unique), 5), fontsize=9)
    caption = ("Each dot is a trial's best epoch, coloured by stage (grey: not completed: pruned, failed, or still "
               "running in a sweep not yet done). Shaded spans and the bars along "
               "the bottom are each stage's sampling range: coarse to fine narrows them, a best value at an edge "
               "extends them. The star is the best trial.")
    return Figure("fig-hyperparameters", f"{data.metric_name} against each hyperparameter", caption, png_bytes(fig))


def _sparse_minor_ticks(ax: Any) -> None:
    """Minor ticks at 2 and 5 only, on a log axis spanning more than a decade.

    Such an axis labels no minor ticks, so the marks at 3, 4, 6-9 only guide the eye; each is an artist
    matplotlib builds and lays out on every draw, a quarter of the hyperparameter grid's time. An axis within
    a decade keeps them all: its minor ticks carry the labels.
    """
    from matplotlib.ticker import LogLocator

    low, high = ax.get_xlim()
    if low > 0 and high / low > 10:
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))


def _room_for_stage_bars(ax: Any, stages: int) -> None:
    """Lower the y axis so the per-stage range bars sit below the dots, not on them."""
    low, high = ax.get_ylim()
    share = 0.05 * stages + 0.04  # of the axes height the bars take
    ax.set_ylim(low - (high - low) * share / (1 - share), high)


def _jitter(trial_id: int) -> float:
    return (((trial_id * 2654435761) % 1000) / 1000 - 0.5) * 0.3  # deterministic spread of categorical dots


def _lines(ax: Any, data: SweepData, column: Any, *, log: bool = False) -> Counter[str]:
    """One line per trial; completed ones coloured by stage, pruned and failed ones grey. Returns end reasons, with
    the trials that ended without one finite value to draw (diverged at their first epoch) counted apart."""
    from matplotlib.collections import LineCollection

    colors = stage_colors(len(data.stage_spaces))
    reasons: Counter[str] = Counter()
    by_status: dict[bool, tuple[list[Any], list[Any]]] = {True: ([], []), False: ([], [])}
    ends = []
    for t in data.trials:
        rows = data.curves.get(t["trial_id"], [])
        points = [(r["epoch"], column(r)) for r in rows]
        points = [(x, y) for x, y in points if y is not None and math.isfinite(y) and (not log or y > 0)]
        live = t["status"] == "completed"
        if not points:
            if rows and not live:  # left out of the plot, not out of the legend's counts
                reasons[f"{_ended(t)}, not drawn (no finite value)"] += 1
            continue
        if not live:
            reasons[_ended(t)] += 1
            ends.append(points[-1])
        segs, cols = by_status[live]
        segs.append(points)
        cols.append(colors[(t["stage"] - 1) % len(colors)] if live else PRUNED_GREY)
    for live, (segs, cols) in by_status.items():
        if segs:
            ax.add_collection(LineCollection(segs, colors=cols, linewidths=1.6 if live else 1.0,
                                             alpha=0.9 if live else 0.6, zorder=3 if live else 2))
            if any(len(s) == 1 for s in segs):  # one-epoch trials are points, not lines
                single = [s[0] for s in segs if len(s) == 1]
                ax.scatter(*zip(*single), s=10, c=[c for s, c in zip(segs, cols) if len(s) == 1], zorder=3)
    if ends:
        ax.scatter(*zip(*ends), marker="x", s=28, color="#555555", zorder=4)
    ax.autoscale_view()
    if log and any(segs for segs, _ in by_status.values()):  # no finite positive loss at all (every trial diverged):
        ax.set_yscale("log")  # a log axis over nothing makes matplotlib raise
    _epoch_axis(ax)
    ax.grid(alpha=0.25)
    return reasons


def _ended(trial: Mapping[str, Any]) -> str:
    """A grey line's legend entry: ``pruned: asha_rung_1``; a running trial (no reason yet) is ``running``."""
    reason = trial.get("reason")
    return f"{trial['status']}: {reason}" if reason and reason != trial["status"] else trial["status"]


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one epoch: tick 1, not 0.945 ... 1.05


def _status_legend(ax: Any, data: SweepData, reasons: Counter[str]) -> None:
    from matplotlib.lines import Line2D

    colors = stage_colors(len(data.stage_spaces))
    handles = [Line2D([], [], color=colors[i], lw=2, label=f"stage {i + 1} (completed)")
               for i in range(len(data.stage_spaces))]
    handles += [Line2D([], [], color=PRUNED_GREY, marker="x", markeredgecolor="#555555", lw=1,
                       label=f"{reason} ({n})") for reason, n in reasons.most_common(6)]
    ax.legend(handles=handles, fontsize=8, loc="best")


def plot_learning_curves(data: SweepData) -> Figure | None:
    if not data.curves:
        return None
    fig = new_figure(12, 4.2)
    left, right = fig.subplots(1, 2)
    reasons = _lines(left, data, data.epoch_value)
    if data.accuracy:
        left.set_ylim(0.0, 1.02)  # accuracy reads from 0: a zoomed axis makes small gains look large
    left.set_ylabel(data.metric_name)
    left.set_title(f"{data.metric_name} per epoch")
    _status_legend(left, data, reasons)
    # A log axis drops every loss at or below 0: a task's own loss (a Gaussian negative log-likelihood) can be.
    log = not any(r["train_loss"] is not None and r["train_loss"] <= 0 for rows in data.curves.values() for r in rows)
    _lines(right, data, lambda r: r["train_loss"], log=log)
    units = ", standardised targets" if data.targets_standardised else ""  # not the left panel's units
    right.set_ylabel(f"training loss{units}" + (" (log)" if log else ""))
    right.set_title("training loss per epoch")
    caption = ("Completed trials in their stage's colour; pruned, failed and unfinished trials grey, ending in a "
               "cross, with the pruner's reasons and counts in the legend.")
    if not log:
        caption += " Training losses on a linear axis: some are at or below 0, which a log axis cannot show."
    return Figure("fig-learning-curves", "Learning curves", caption, png_bytes(fig))


def plot_gap(data: SweepData) -> Figure | None:
    def gap(r: Mapping[str, Any]) -> float | None:
        if data.accuracy:
            train, val = r["train_accuracy"], r["val_accuracy"]
            return train - val if train is not None and val is not None else None
        train = data.train_loss_as_val(r)  # in val_loss's units: never the standardised train_loss
        return r["val_loss"] - train if r["val_loss"] is not None and train is not None else None

    label = "train - validation accuracy" if data.accuracy else "validation - train loss"
    what = "accuracy" if data.accuracy else "loss"
    if not any(gap(r) is not None for rows in data.curves.values() for r in rows):
        return None
    fig = new_figure(8, 4)
    ax = fig.subplots()
    reasons = _lines(ax, data, gap)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(label)
    _status_legend(ax, data, reasons)
    caption = (f"The train/validation {what} gap: a gap that keeps growing is overfitting (more regularisation, "
               "more data); no gap at all with a poor score is underfitting (a bigger model).")
    if data.targets_standardised and not data.accuracy:
        caption += " Both losses in the targets' original units (the training loss recomputed on mapped-back outputs)."
    return Figure("fig-gap", "Train / validation gap", caption, png_bytes(fig))


def gap_missing_reason(data: SweepData) -> str:
    """Why ``fig-gap`` is not drawn."""
    if not data.loss_per_example and not data.accuracy:
        return ("the task's loss_fn is not a mean over examples (on the validation split whole it differs from the "
                "mean of its values on the split's halves: a Cox, contrastive or batch-hard triplet loss, or a sum), "
                "so the training loss averaged over batches is not in val_loss's units")
    if data.targets_standardised and not data.accuracy:
        return ("no training loss in the targets' original units recorded (train_loss_original: a task's own "
                "train_epoch on standardised targets, or a sweep from before it, has none)")
    return "no training accuracy or loss recorded"


def plot_update_ratio(data: SweepData) -> Figure | None:
    if not any(r.get("update_ratio") for rows in data.curves.values() for r in rows):
        return None
    best = data.best()
    layers = diag_rows(data, best["trial_id"], "parameter") if best else []
    fig = new_figure(12 if layers else 8, 4)
    axes = fig.subplots(1, 2 if layers else 1, squeeze=False).ravel()
    reasons = _lines(axes[0], data, lambda r: r.get("update_ratio"), log=True)
    axes[0].set_ylabel("||update|| / ||weights|| (log)")
    axes[0].set_title("whole model, last step of each epoch")
    _status_legend(axes[0], data, reasons)
    if layers:
        by_layer: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in layers:
            if r["update_ratio"] and r["update_ratio"] > 0:
                by_layer[layer_label(r["layer"])].append((r["epoch"], r["update_ratio"]))
        for layer, points in by_layer.items():
            points.sort()
            axes[1].plot(*zip(*points), marker="o", ms=3, lw=1.4, label=layer)
        axes[1].set_yscale("log")
        _epoch_axis(axes[1])
        axes[1].set_title(f"best trial {best['trial_id']}, per tensor (first step of each epoch)")
        axes[1].grid(alpha=0.25)
        if by_layer:
            axes[1].legend(fontsize=7, ncols=2)
        else:  # every step left the weights as they were (float32 rounds a tiny update away)
            axes[1].text(0.5, 0.5, "no tensor moved", ha="center", va="center", transform=axes[1].transAxes)
    for ax in axes:
        ax.axhline(HEALTHY_UPDATE_RATIO, color="#d62728", ls="--", lw=1.2)
        ax.text(0.01, HEALTHY_UPDATE_RATIO, " 1e-3", color="#d62728", transform=ax.get_yaxis_transform(), va="bottom")
    caption = ("The update-to-weight ratio CS231n watches: near 1e-3 (red line) is healthy; far above, the learning "
               "rate is probably too high; far below, too low.")
    return Figure("fig-update-ratio", "Update / weight ratio", caption, png_bytes(fig))


def plot_activations(data: SweepData) -> Figure | None:
    best = data.best()
    rows = diag_rows(data, best["trial_id"], "activation") if best else []
    if not rows:
        return None
    by_layer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_layer[f"{layer_label(r['layer'])} ({r['module']})"].append(r)
    kept = {k: sorted((r for r in v if r.get("hist_counts")), key=lambda r: r["epoch"]) for k, v in by_layer.items()}
    shown = [k for k, v in kept.items() if v][:4]
    fig = new_figure(12, 7 if shown else 3.6)
    grid = fig.add_gridspec(2 if shown else 1, 2 * max(len(shown), 1))
    half = max(len(shown), 1)
    std_ax, zero_ax = fig.add_subplot(grid[0, :half]), fig.add_subplot(grid[0, half:])
    for layer, points in by_layer.items():
        points.sort(key=lambda r: r["epoch"])
        epochs = [r["epoch"] for r in points]
        std_ax.plot(epochs, [r["std"] for r in points], marker="o", ms=3, label=layer)
        zero_ax.plot(epochs, [r["zero_fraction"] for r in points], marker="o", ms=3, label=layer)
    std_ax.set_title("activation std")
    zero_ax.set_title("fraction of zeros (dead ReLUs when near 1)")
    zero_ax.set_ylim(-0.02, 1.02)
    for ax in (std_ax, zero_ax):
        _epoch_axis(ax)
        ax.grid(alpha=0.25)
    std_ax.legend(fontsize=7)
    for i, layer in enumerate(shown):  # first and last kept histogram of each layer: how the distribution moved
        ax = fig.add_subplot(grid[1, 2 * i: 2 * i + 2])
        first, last = kept[layer][0], kept[layer][-1]
        ax.stairs(last["hist_counts"], last["hist_edges"], fill=True, alpha=0.5, label=f"epoch {last['epoch']}")
        if last is not first:
            ax.stairs(first["hist_counts"], first["hist_edges"], color="black", lw=1, label=f"epoch {first['epoch']}")
        low, high, hidden = central_range([first, last])
        ax.set_xlim(low, high)  # the bulk of the values, not the few outliers that set the bin range
        ax.set_title(layer + (f"\n{hidden:.1%} of values beyond the axis" if hidden > 0 else ""), fontsize=9)
        ax.set_yticks([])
        ax.legend(fontsize=7)
    caption = (f"Best trial {best['trial_id']}, measured on a fixed probe batch at the end of each epoch. Activations "
               "that collapse to zero or saturate point at the initialisation or the learning rate.")
    return Figure("fig-activations", "Activations of the best trial", caption, png_bytes(fig))



def central_range(hists: Sequence[Mapping[str, Any]], mass: float = 0.99) -> tuple[float, float, float]:
    """(low, high, share of values outside) of an axis that covers ``mass`` of each histogram's values.

    A histogram's bins span min to max, so one outlier at 20 stretches an axis whose values sit within 3.
    """
    parsed = []
    for h in hists:
        counts, edges = np.asarray(h["hist_counts"], float), np.asarray(h["hist_edges"], float)
        if counts.sum() > 0 and len(edges) == len(counts) + 1:
            parsed.append((counts, edges))
    if not parsed:
        return 0.0, 1.0, 0.0
    lows, highs = [], []
    tail = (1.0 - mass) / 2
    for counts, edges in parsed:
        cum = np.cumsum(counts) / counts.sum()
        lows.append(edges[int(np.searchsorted(cum, tail, side="right"))])
        highs.append(edges[min(int(np.searchsorted(cum, 1.0 - tail, side="left")) + 1, len(edges) - 1)])
    low, high = min(lows), max(highs)
    if high <= low:
        high = low + 1e-12
    outside = sum(c[(e[1:] <= low) | (e[:-1] >= high)].sum() for c, e in parsed)
    total = sum(c.sum() for c, _ in parsed)
    pad = 0.03 * (high - low)
    return low - pad, high + pad, float(outside / total)


def plot_importance(data: SweepData, result: tuple[dict[str, float], int] | None) -> tuple[Figure | None, str]:
    if result is None:
        return None, "too few finished trials in one stage to fit an importance model (6 needed)"
    scores, stage = result
    fixed = [n for n in data.space.searched if n not in scores]  # one value in that stage: no effect to measure
    if not scores:
        return None, f"no searched parameter took two different values in stage {stage}'s trials"
    names = sorted(scores, key=scores.get)
    fig = new_figure(7, 0.32 * len(names) + 1.5)
    ax = fig.subplots()
    bars = ax.barh(names, [scores[n] for n in names], color="#4c72b0")
    ax.bar_label(bars, labels=[f"{scores[n]:.2f}" for n in names], padding=3, fontsize=9)
    ax.set_xlabel("share of the score's variance explained (main effect)")
    ax.set_xlim(0, max(1.0, max(scores.values()) * 1.05))
    ax.grid(axis="x", alpha=0.25)
    n = sum(1 for t in data.trials if t["stage"] == stage and t.get("best_score") is not None)
    caption = (f"fANOVA-style importance from stage {stage} ({n} trials): a random forest maps each config (in "
               "its sampling scale) to its best score; a parameter's bar is the variance of its partial-dependence "
               "curve over the variance of all predictions. Tune the long bars first; the rest of 1 is interaction.")
    if n < 2 * len(names):
        caption += f" Only {n} trials for {len(names)} parameters: read this as a rough hint."
    if fixed:
        caption += (f" Not scored, as each held one value in stage {stage}'s trials (or was never active there): "
                    f"{', '.join(fixed)}.")
    return Figure("fig-importance", "Hyperparameter importance", caption, png_bytes(fig)), ""


def plot_ensembles(data: SweepData) -> Figure | None:
    table = data.ensembles
    if table is None:
        return None
    rows = table.to_pylist()
    label_col = next((c for c in ("name", "method", "kind", "ensemble") if c in table.column_names), None)
    numeric = [f.name for f in table.schema if pa.types.is_floating(f.type)
               and any(k in f.name for k in ("accuracy", "loss", "mse")) and any(r[f.name] is not None for r in rows)]
    chosen_by = _objective_columns(rows)  # a task's own metric chose them (a ROC AUC): drawn first, by its name
    if not numeric and not chosen_by:
        return None
    labels = [(str(r[label_col]) if label_col else str(i)) + (f" ({r['size']})" if r.get("size") else "")
              + (" *" if r.get("chosen") else "") for i, r in enumerate(rows)]
    groups = [chosen_by, [c for c in numeric if "accuracy" in c], [c for c in numeric if "loss" in c],
              [c for c in numeric if "mse" in c]]  # a regression's: in the targets' units
    groups = [g for g in groups if g]
    fig = new_figure(6 * len(groups), 0.45 * len(rows) + 2)
    axes = fig.subplots(1, len(groups), squeeze=False).ravel()
    for ax, cols in zip(axes, groups):
        height = 0.8 / len(cols)
        for j, col in enumerate(cols):
            values = [r[col] if r[col] is not None else np.nan for r in rows]
            ax.barh(np.arange(len(rows)) + j * height, values, height=height, label=col)
        ax.set_yticks(np.arange(len(rows)) + 0.4 - height / 2, labels)
        ax.legend(fontsize=8)
        ax.grid(axis="x", alpha=0.25)
        finite = [r[c] for r in rows for c in cols if r[c] is not None]
        if finite and "accuracy" in cols[0] and cols is not chosen_by:
            start = max(0.0, min(finite) - 0.05)
            ax.set_xlim(start, min(1.0, max(finite) + 0.02))
            if start > 0:  # zoomed in to show the differences: say so where the reader looks
                ax.set_xlabel(f"accuracy: the axis starts at {start:.3f}, not 0", color="#b35900")
                ax.spines["left"].set_linestyle((0, (4, 3)))
        for j, col in enumerate(cols):  # the numbers themselves, at the end of each bar
            for i, r in enumerate(rows):
                if r[col] is not None:
                    ax.annotate(shown_number(r[col]), (r[col], i + j * height), xytext=(2, 0),
                                textcoords="offset points", va="center", fontsize=6)
    caption = ("Ensembles from the ensembles table: members (in brackets) chosen on validation predictions, test "
               "measured afterwards; * marks the one chosen on validation")
    if chosen_by:
        better = {"min": ", lower is better", "max": ", higher is better"}.get((data.objective or ("", ""))[1], "")
        caption += f" {chosen_by[0].removeprefix('val_')} (the sweep's objective{better})"
    return Figure("fig-ensembles", "Ensembles", caption + ".", png_bytes(fig))


def _objective_columns(rows: list[dict[str, Any]]) -> list[str]:
    """``["val_auc", "test_auc"]`` added to each row from its ``detail`` when the sweep's own metric chose the
    ensembles (caviar's log loss, accuracy or MSE are columns of the table already); [] otherwise."""
    details = [json.loads(r["detail"]) if isinstance(r.get("detail"), str) else (r.get("detail") or {}) for r in rows]
    names = {d.get("chosen_by") for d in details if d.get("val_objective") is not None}
    if len(names) != 1 or next(iter(names)) in (None, "val_log_loss", "val_accuracy", "val_mse"):
        return []
    name = next(iter(names)).removeprefix("val_")
    for r, d in zip(rows, details, strict=True):
        r[f"val_{name}"], r[f"test_{name}"] = d.get("val_objective"), d.get("test_objective")
    return [f"val_{name}", f"test_{name}"]

