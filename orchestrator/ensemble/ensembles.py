"""Ensembles chosen on validation predictions, measured on test only afterwards.

The CS231n notes: averaging a few models (the top-k of a sweep, checkpoints of one run, EMA
weights, one config trained from several seeds) buys a couple of percent for free.
Selection sees only a ``ValPool`` (keys, validation probabilities, validation labels), so
test data cannot steer a choice; test metrics are attached by ``with_test_metrics`` once
the members are fixed.

Rankings are lower-is-better tuples: ``metric="accuracy"`` ranks by accuracy, then log loss;
``metric="log_loss"`` by log loss, then accuracy; remaining ties go to key order. An
:class:`Objective` (the sweep's own objective, e.g. a task metric such as ``val_brier``) replaces
``metric`` everywhere it is given: every ranking is then by the objective in its mode, then log loss.

Labels are class indices ``(n,)`` or, for soft labels, class probabilities ``(n, C)``: then
accuracy compares the most probable class with the target's most probable class, and log loss
is the cross-entropy against the target probabilities (what the workers report as ``val_log_loss``).

The workers store log-probabilities (``Candidate.log``), and every mixture is formed in log space
(``log(sum_i w_i p_i)`` by logaddexp), so a confidently wrong member's log loss is its own, not one
clipped where float16 or float32 probabilities underflow. Sweeps stored as probabilities by an
earlier caviar keep the clip they were scored with: log losses floored at ``CLIP`` (``eps``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from orchestrator.errors import CaviarError, ConfigError, TaskError

SELECTION_METRICS = ("accuracy", "log_loss")
WEIGHTS = ("raw", "ema")
_SUM_TOL = 1e-2  # catches logits and log-probs; float16 rows sum to 1 within ~1e-3
_CHUNK_BYTES = 1 << 26  # greedy by accuracy: at most ~64 MiB of candidate mixtures at once
CLIP = 1e-7  # the probability floor of log losses over predictions stored as probabilities (an earlier caviar)


@dataclass(frozen=True, order=True)
class CandidateKey:
    """One stored prediction set: a trial's checkpoint at an epoch, with raw or EMA weights."""

    trial_id: int
    epoch: int
    weights: str = "raw"

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ConfigError(f"weights: {self.weights!r} is not one of {', '.join(WEIGHTS)}")


@dataclass(frozen=True, eq=False)
class Candidate:
    """Class probabilities of one candidate on validation and (optionally) test; ``log``: log-probabilities."""

    key: CandidateKey
    val_probs: np.ndarray  # (n_val, C)
    test_probs: np.ndarray | None = None  # (n_test, C)
    log: bool = False  # the arrays hold log-probabilities (what workers store): no underflow to clip

    def log_probs(self, split: str) -> np.ndarray:
        """Log-probabilities of ``split`` as float32 (a stored probability of 0 gives -inf: ``CLIP`` floors it)."""
        values = self.val_probs if split == "val" else self.test_probs
        assert values is not None
        if self.log:
            return np.asarray(values, dtype=np.float32)
        with np.errstate(divide="ignore"):
            return np.log(np.asarray(values, dtype=np.float32))

    def __post_init__(self) -> None:
        if np.ndim(self.val_probs) != 2:
            raise ConfigError(f"val_probs: {self.key} must be (n_val, classes), got {np.shape(self.val_probs)}")
        if self.test_probs is not None and (
            np.ndim(self.test_probs) != 2 or np.shape(self.test_probs)[1] != np.shape(self.val_probs)[1]
        ):
            raise ConfigError(f"test_probs: {self.key} has shape {np.shape(self.test_probs)}, classes must match val")


@dataclass(frozen=True)
class Objective:
    """The sweep's objective as ensemble selection sees it: a column name, its mode, and a scorer.

    ``score(outputs, split)`` gets an ensemble's averaged outputs on ``split`` (``"val"``; ``"test"``
    only once the members are fixed): class probabilities ``(n, C)``, or regression values ``(n, d)``,
    and returns the objective's value there. The caller (which may run task code) knows the targets.
    """

    name: str  # the metrics column, e.g. "val_brier"
    mode: str  # "min" or "max"
    score: Callable[[np.ndarray, str], float]

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"mode: {self.mode!r} is not one of min, max")

    def value(self, outputs: np.ndarray, split: str, what: str) -> float:
        """The objective on ``outputs``; a failure is one line naming the objective and ``what`` was scored."""
        try:
            return float(self.score(outputs, split))
        except CaviarError as exc:
            raise type(exc)(f"objective {self.name} of {what}: {exc}") from exc
        except Exception as exc:
            raise TaskError(f"objective {self.name} of {what}: {type(exc).__name__}: {exc}") from exc

    def loss(self, value: float | None) -> float:
        """Lower is better: the value, negated when maximised; NaN, infinite (or none) ranks last: a metric of +inf
        under mode max (a likelihood that overflowed) would otherwise rank best."""
        if value is None or not math.isfinite(value):
            return math.inf
        return value if self.mode == "min" else -value


@dataclass(frozen=True)
class Member:
    key: CandidateKey
    weight: float


@dataclass(frozen=True)
class Ensemble:
    """Members with weights summing to 1; test metrics stay None until ``with_test_metrics``."""

    method: str
    members: tuple[Member, ...]
    val_accuracy: float
    val_log_loss: float
    test_accuracy: float | None = None
    test_log_loss: float | None = None
    val_objective: float | None = None  # the Objective's value, when one chose
    test_objective: float | None = None


# -- metrics ----------------------------------------------------------------------------


def hard_labels(y: np.ndarray) -> np.ndarray:
    """Class indices: the labels themselves, or each soft label's most probable class."""
    y = np.asarray(y)
    return np.argmax(y, axis=-1) if y.ndim == 2 else y


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose most probable class is the label (a soft label's most probable class)."""
    return float(np.mean(np.argmax(probs, axis=-1) == hard_labels(y)))


def log_loss(probs: np.ndarray, y: np.ndarray, eps: float = CLIP) -> float:
    """Mean negative log probability of the true class, clipped at ``eps`` so one zero is finite.

    Soft labels ``(n, C)``: the cross-entropy against the target probabilities, clipped alike.
    """
    with np.errstate(divide="ignore"):
        return nll(np.log(np.asarray(probs, dtype=np.float64)), y, eps)


def nll(log_probs: np.ndarray, y: np.ndarray, eps: float = 0.0) -> float:
    """Log loss from log-probabilities ``(n, C)``: exact, or floored at probability ``eps`` when it is above 0."""
    y = np.asarray(y)
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if y.ndim == 2:
        return float(_soft_nll(log_probs, y, eps))
    return float(_nll(log_probs[np.arange(len(y)), y], eps))


def _floored(log_probs: np.ndarray, eps: float) -> np.ndarray:
    """``log p`` within ``[log eps, 0]``: probabilities in ``[eps, 1]`` as the clip of stored probabilities had them."""
    return np.clip(log_probs, math.log(eps) if eps > 0 else -np.inf, 0.0)


def _nll(true_log_probs: np.ndarray, eps: float = 0.0) -> np.ndarray:
    # 0.0 - x, not -x: a perfect member's log loss is 0.0, which -x made -0.0 (the answer printed "-0.0000")
    return 0.0 - _floored(true_log_probs, eps).mean(axis=-1)


def _soft_nll(log_probs: np.ndarray, targets: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Soft-target cross-entropy of ``log_probs`` (..., n, C) against ``targets`` (n, C), mean over rows."""
    terms = np.where(targets > 0, targets * _floored(log_probs, eps), 0.0)  # 0 * log 0 is 0, not NaN
    return 0.0 - terms.sum(axis=-1).mean(axis=-1)


def average(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean of probability arrays, in float64 so float16 inputs lose no mass."""
    w = np.asarray(weights, dtype=np.float64)
    if len(probs) == 0 or w.shape != (len(probs),):
        raise ConfigError(f"weights: need one weight per array, got {w.shape[0] if w.ndim else 0} for {len(probs)}")
    if (w < 0).any() or w.sum() <= 0:
        raise ConfigError("weights: must be non-negative with a positive sum")
    out = np.zeros(np.shape(probs[0]), dtype=np.float64)
    for wi, p in zip(w / w.sum(), probs, strict=True):
        if np.shape(p) != out.shape:
            raise ConfigError(f"probs: shapes differ, {np.shape(p)} vs {out.shape}")
        out += wi * np.asarray(p, dtype=np.float64)
    return out


def log_average(log_probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``log`` of the weighted mean of ``exp(log_probs)``, in float64 and log space: no member underflows."""
    w = np.asarray(weights, dtype=np.float64)
    if len(log_probs) == 0 or w.shape != (len(log_probs),):
        raise ConfigError(f"weights: need one weight per array, got {w.shape[0] if w.ndim else 0} for "
                          f"{len(log_probs)}")
    if (w < 0).any() or w.sum() <= 0:
        raise ConfigError("weights: must be non-negative with a positive sum")
    out = np.full(np.shape(log_probs[0]), -np.inf)
    with np.errstate(divide="ignore"):
        for wi, lp in zip(np.log(w / w.sum()), log_probs, strict=True):
            if np.shape(lp) != out.shape:
                raise ConfigError(f"probs: shapes differ, {np.shape(lp)} vs {out.shape}")
            np.logaddexp(out, wi + np.asarray(lp, dtype=np.float64), out=out)
    return out


def _mix(log_total: np.ndarray, log_probs: np.ndarray, count: int) -> np.ndarray:
    """``log((exp(log_total) + exp(log_probs)) / (count + 1))``: one more member in a mixture of ``count``."""
    return np.logaddexp(log_total, log_probs) - math.log(count + 1)


def probabilities(log_probs: np.ndarray) -> np.ndarray:
    """float64 probabilities (what an objective scores): ``exp`` of a mixture's log-probabilities."""
    return np.exp(np.asarray(log_probs, dtype=np.float64))


def clip_of(cands: Sequence[Candidate]) -> float:
    """The log-loss floor of a set of candidates: ``CLIP`` when any was stored as probabilities (an earlier caviar's
    sweep, resumed or not: one rule ranks them all, as before), else none."""
    return 0.0 if all(c.log for c in cands) else CLIP


# -- checks -----------------------------------------------------------------------------


def _check_rows(name: str, probs: np.ndarray, log: bool = False) -> None:
    if log:
        if np.isnan(probs).any() or (probs == np.inf).any():
            raise ConfigError(f"{name}: log-probabilities must not be NaN or +inf")
        probs = np.exp(np.asarray(probs, dtype=np.float64))
    elif not np.isfinite(probs).all() or (probs < 0).any():
        raise ConfigError(f"{name}: probabilities must be finite and non-negative")
    sums = probs.sum(axis=-1, dtype=np.float64)
    if np.abs(sums - 1).max(initial=0) > _SUM_TOL:
        raise ConfigError(
            f"{name}: rows must sum to 1 (got up to {np.abs(sums - 1).max():.3g} off); pass softmax outputs"
        )


def _check_labels(name: str, y: np.ndarray, n: int, classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:  # soft labels: one probability row per example
        if y.shape != (n, classes) or not np.issubdtype(y.dtype, np.floating):
            raise ConfigError(f"{name}: expected soft labels of shape ({n}, {classes}), got {y.shape} of {y.dtype}")
        y = y.astype(np.float64)
        _check_rows(name, y)
        return y
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"{name}: expected {n} integer labels, got shape {y.shape} of {y.dtype}")
    if n and (y.min() < 0 or y.max() >= classes):
        raise ConfigError(f"{name}: labels must lie in [0, {classes})")
    return y.astype(np.int64)


def _check_metric(metric: str) -> None:
    if metric not in SELECTION_METRICS:
        raise ConfigError(f"metric: {metric!r} is not one of {', '.join(SELECTION_METRICS)}")


def _check_positive(name: str, value: int, low: int = 1) -> None:
    if value < low:
        raise ConfigError(f"{name}: must be >= {low}, got {value}")


# -- the validation-only view -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ValPool:
    """What selection may see: keys (sorted), validation log-probabilities (M, n, C) float32, labels (n,) or soft
    (n, C), and the log-loss floor ``eps`` (``clip_of`` the candidates: 0 for none)."""

    keys: tuple[CandidateKey, ...]
    log_probs: np.ndarray
    labels: np.ndarray
    eps: float = 0.0
    _objective_losses: dict[Objective, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.log_probs.ndim != 3 or len(self.keys) != self.log_probs.shape[0] or not self.keys:
            raise ConfigError(f"val_probs: need one (n_val, classes) array per key, got {self.log_probs.shape}")
        if len(set(self.keys)) != len(self.keys):
            raise ConfigError("cands: duplicate candidate keys")
        _check_labels("y_val", self.labels, self.log_probs.shape[1], self.log_probs.shape[2])

    @classmethod
    def of(cls, cands: Sequence[Candidate], y_val: np.ndarray, eps: float | None = None) -> ValPool:
        """Stack the validation side of ``cands`` as log-probabilities; their test arrays are left behind.
        ``eps`` None: ``clip_of(cands)``."""
        if len(cands) == 0:
            raise ConfigError("cands: empty candidate list")
        ordered = sorted(cands, key=lambda c: c.key)
        shape = np.shape(ordered[0].val_probs)
        log_probs = np.empty((len(ordered), *shape), dtype=np.float32)
        for i, c in enumerate(ordered):
            if np.shape(c.val_probs) != shape:
                raise ConfigError(f"val_probs: {c.key} has shape {np.shape(c.val_probs)}, expected {shape}")
            _check_rows("val_probs", np.asarray(c.val_probs), c.log)
            log_probs[i] = c.log_probs("val")
        y = _check_labels("y_val", y_val, shape[0], shape[1])
        return cls(tuple(c.key for c in ordered), log_probs, y, clip_of(cands) if eps is None else eps)

    @property
    def soft(self) -> bool:
        return self.labels.ndim == 2

    @cached_property
    def hard_labels(self) -> np.ndarray:
        return hard_labels(self.labels)

    @cached_property
    def true_log_probs(self) -> np.ndarray:
        """(M, n) log-probability each candidate gives the true class: all that log loss needs (class indices)."""
        return self.log_probs[:, np.arange(len(self.labels)), self.labels].astype(np.float64)

    @cached_property
    def single_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(accuracy, log loss) of each candidate alone."""
        acc = (np.argmax(self.log_probs, axis=-1) == self.hard_labels).mean(axis=-1)
        if self.soft:
            return acc, np.array([_soft_nll(lp.astype(np.float64), self.labels, self.eps) for lp in self.log_probs])
        return acc, _nll(self.true_log_probs, self.eps)

    def objective_losses(self, objective: Objective) -> np.ndarray:
        """(M,) the objective's lower-is-better value of each candidate alone, computed once per objective."""
        if objective not in self._objective_losses:
            self._objective_losses[objective] = np.array([
                objective.loss(objective.value(probabilities(lp), "val", f"candidate {describe(key)}"))
                for key, lp in zip(self.keys, self.log_probs, strict=True)])
        return self._objective_losses[objective]


CandsOrPool = Sequence[Candidate] | ValPool  # a ready pool saves re-stacking when building several ensembles


def _as_pool(cands: CandsOrPool, y_val: np.ndarray | None) -> ValPool:
    if isinstance(cands, ValPool):
        if y_val is not None:
            raise ConfigError("y_val: the pool already holds the validation labels")
        return cands
    if y_val is None:
        raise ConfigError("y_val: required with a candidate list")
    return ValPool.of(cands, y_val)


def describe(key: CandidateKey) -> str:
    """``trial 3 epoch 2 (ema)``: a candidate as an error message names it."""
    return f"trial {key.trial_id} epoch {key.epoch}" + (" (ema)" if key.weights == "ema" else "")


def single_order(pool: ValPool, metric: str, objective: Objective | None, idx: Sequence[int] | None = None,
                  ) -> np.ndarray:
    """Positions in ``idx`` (default: every candidate), best candidate alone first; ties: key order."""
    acc, ll = pool.single_scores
    sel = np.arange(len(pool.keys)) if idx is None else np.asarray(idx, dtype=np.int64)
    if objective is None:
        return _order(acc[sel], ll[sel], metric)
    return np.lexsort((np.arange(len(sel)), ll[sel], pool.objective_losses(objective)[sel]))


def _order(acc: np.ndarray, ll: np.ndarray, metric: str) -> np.ndarray:
    """Indices best first; exact ties go to the lower index, which is key order in a pool."""
    _check_metric(metric)
    primary, secondary = (-acc, ll) if metric == "accuracy" else (ll, -acc)
    return np.lexsort((np.arange(len(primary)), secondary, primary))


def _rank(acc: float, ll: float, metric: str) -> tuple[float, float]:
    return (-acc, ll) if metric == "accuracy" else (ll, -acc)


def ensemble_rank(e: Ensemble, metric: str, objective: Objective | None = None) -> tuple[float, float]:
    """Lower is better: by the objective (then log loss) when given, else by ``metric`` as ``_rank``."""
    if objective is None:
        return _rank(e.val_accuracy, e.val_log_loss, metric)
    return objective.loss(e.val_objective), e.val_log_loss


def _ensemble(method: str, pool: ValPool, idx: Sequence[int], counts: Sequence[float],
              objective: Objective | None = None) -> Ensemble:
    total = float(np.sum(counts))
    members = sorted(
        (Member(pool.keys[i], float(c) / total) for i, c in zip(idx, counts, strict=True)),
        key=lambda m: (-m.weight, m.key),
    )
    mixture = log_average([pool.log_probs[i] for i in idx], counts)
    value = None if objective is None else objective.value(probabilities(mixture), "val", f"the {method} ensemble")
    return Ensemble(method, tuple(members), accuracy(mixture, pool.labels), nll(mixture, pool.labels, pool.eps),
                    val_objective=value)


# -- selection: validation only -------------------------------------------------------------


def best_single(cands: CandsOrPool, y_val: np.ndarray | None = None, *, metric: str = "accuracy",
                objective: Objective | None = None) -> Ensemble:
    """The one best candidate: the baseline every ensemble has to beat."""
    pool = _as_pool(cands, y_val)
    return _ensemble("single", pool, [int(single_order(pool, metric, objective)[0])], [1], objective)


def _top_k(pool: ValPool, k: int, metric: str, weights: str | None, method: str,
           objective: Objective | None = None) -> Ensemble:
    _check_positive("k", k)
    best_per_trial: dict[int, int] = {}
    for i in single_order(pool, metric, objective):  # best first: a trial's first hit is its best
        key = pool.keys[i]
        if weights is None or key.weights == weights:
            best_per_trial.setdefault(key.trial_id, int(i))
    chosen = list(best_per_trial.values())[:k]  # insertion order is the trials' rank
    if not chosen:
        raise ConfigError(f"cands: no candidates with {weights} weights")
    return _ensemble(method, pool, chosen, [1] * len(chosen), objective)


def top_k(cands: CandsOrPool, y_val: np.ndarray | None = None, k: int = 5, *, metric: str = "accuracy",
          objective: Objective | None = None) -> Ensemble:
    """Equal-weight average of the ``k`` best trials, each by its best checkpoint (raw or EMA)."""
    return _top_k(_as_pool(cands, y_val), k, metric, None, "top_k", objective)


def seed_ensemble(
    cands: CandsOrPool, y_val: np.ndarray | None = None, groups: Sequence[Sequence[int]] = (), *,
    metric: str = "accuracy", objective: Objective | None = None,
) -> Ensemble | None:
    """CS231n's "same model, different initializations": one config trained with several seeds.

    ``groups`` are trial ids that share a config (see :func:`same_config_groups`); each
    member is its trial's best checkpoint, equally weighted. Of several groups, the best on
    validation. None when no group has two trials with predictions.
    """
    pool = _as_pool(cands, y_val)
    best_of_trial: dict[int, int] = {}
    for i in single_order(pool, metric, objective):  # best first: a trial's first hit is its best
        best_of_trial.setdefault(pool.keys[i].trial_id, int(i))
    built = []
    for group in groups:
        chosen = [best_of_trial[t] for t in group if t in best_of_trial]
        if len(chosen) >= 2:
            built.append(_ensemble("seeds", pool, chosen, [1] * len(chosen), objective))
    return min(built, key=lambda e: ensemble_rank(e, metric, objective), default=None)


def same_config_groups(trials: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Trial ids grouped by identical config and epoch budget, groups of two or more only.

    The budget (``max_epochs``, when given) keeps apart a config that a later stage retrained
    for longer: only copies trained alike are seeds of one model.
    """
    groups: dict[str, list[int]] = {}
    for t in trials:
        key = json.dumps([t.get("max_epochs"), t["config"]], sort_keys=True, default=str)
        groups.setdefault(key, []).append(int(t["trial_id"]))
    return [sorted(ids) for ids in groups.values() if len(ids) >= 2]


def ema_ensemble(
    cands: CandsOrPool, y_val: np.ndarray | None = None, k: int = 5, *, metric: str = "accuracy",
    objective: Objective | None = None,
) -> Ensemble:
    """Like ``top_k`` but over EMA weights only (best EMA checkpoint per trial)."""
    return _top_k(_as_pool(cands, y_val), k, metric, "ema", "ema", objective)


def checkpoint_ensemble(
    cands: CandsOrPool,
    y_val: np.ndarray | None = None,
    trial_id: int | None = None,
    n: int = 5,
    which: str = "best",
    *,
    metric: str = "accuracy",
    objective: Objective | None = None,
) -> Ensemble:
    """Equal-weight average of ``n`` raw checkpoints of one trial (default: the best raw one's).

    ``which="best"`` takes the n best by the validation metric, ``"last"`` the n latest epochs.
    """
    pool = _as_pool(cands, y_val)
    _check_positive("n", n)
    if which not in ("best", "last"):
        raise ConfigError(f"which: {which!r} is not one of best, last")
    raw = [i for i, key in enumerate(pool.keys) if key.weights == "raw"]
    if trial_id is None and raw:
        trial_id = pool.keys[raw[int(single_order(pool, metric, objective, raw)[0])]].trial_id
    idx = [i for i in raw if pool.keys[i].trial_id == trial_id]
    if not idx:
        raise ConfigError(f"trial_id: no raw checkpoints for trial {trial_id}")
    if which == "last":
        chosen = idx[::-1][:n]  # keys are sorted, so idx runs by epoch
    else:
        chosen = [idx[j] for j in single_order(pool, metric, objective, idx)[:n]]
    return _ensemble("checkpoints", pool, chosen, [1] * len(chosen), objective)


def _mixture_log_loss(pool: ValPool, log_total: np.ndarray, count: int) -> np.ndarray:
    """Soft-label log loss of the mixture of ``count`` members (log of their summed probabilities ``log_total``)
    and ``pool`` candidate m, for every m, in bounded chunks."""
    m, n, c = pool.log_probs.shape
    size = max(1, _CHUNK_BYTES // (8 * n * c))
    out = np.empty(m)
    for s in range(0, m, size):
        out[s : s + size] = _soft_nll(_mix(log_total, pool.log_probs[s : s + size], count), pool.labels, pool.eps)
    return out


def _mixture_accuracy(log_probs: np.ndarray, log_total: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Accuracy of the mixture of ``log_total``'s members and ``log_probs[m]`` for every m, in bounded chunks."""
    m, n, c = log_probs.shape
    size = max(1, _CHUNK_BYTES // (8 * n * c))
    out = np.empty(m)
    for s in range(0, m, size):
        mixed = np.logaddexp(log_total, log_probs[s : s + size])
        out[s : s + size] = (np.argmax(mixed, axis=-1) == labels).mean(axis=-1)
    return out


def greedy_selection(
    cands: CandsOrPool,
    y_val: np.ndarray | None = None,
    steps: int = 40,
    init_size: int = 5,
    metric: str = "log_loss",
    objective: Objective | None = None,
) -> Ensemble:
    """Caruana et al. (2004) forward selection with replacement, from a sorted initialisation.

    Start from the ``init_size`` best candidates, then ``steps`` times add the candidate
    (repeats allowed) that gives the best ensemble; return the best step seen, not the last,
    since late additions can overfit. Weights are counts / total. By log loss only the
    true-class probabilities are needed, so a step costs O(M * n); by accuracy it is O(M * n * C),
    as is log loss against soft labels. By an ``objective`` every step scores all M mixtures with it.
    """
    pool = _as_pool(cands, y_val)
    _check_metric(metric)
    _check_positive("steps", steps, 0)
    _check_positive("init_size", init_size)
    if objective is not None:
        return _greedy_by_objective(pool, steps, init_size, objective)
    y, rows = pool.labels, np.arange(len(pool.labels))
    init = _order(*pool.single_scores, metric)[:init_size]
    counts = np.zeros(len(pool.keys), dtype=np.int64)
    counts[init] = 1
    total = _log_sum(pool.log_probs[init])  # log of the running sum of the members' probabilities
    t = int(counts.sum())
    best, best_counts = _rank(accuracy(total, y), nll(total - math.log(t), y, pool.eps), metric), counts.copy()
    for _ in range(steps):
        if pool.soft:
            ll = _mixture_log_loss(pool, total, t)
        else:
            ll = _nll(_mix(total[rows, y], pool.true_log_probs, t), pool.eps)
        # By log loss (continuous) ties are vanishingly rare: skip the O(M n C) accuracy tie-break.
        acc = (_mixture_accuracy(pool.log_probs, total, pool.hard_labels) if metric == "accuracy"
               else np.zeros_like(ll))
        i = int(_order(acc, ll, metric)[0])
        counts[i] += 1
        np.logaddexp(total, pool.log_probs[i], out=total)
        t += 1
        rank = _rank(accuracy(total, y), nll(total - math.log(t), y, pool.eps), metric)
        if rank < best:
            best, best_counts = rank, counts.copy()
    idx = np.flatnonzero(best_counts)
    return _ensemble("greedy", pool, idx.tolist(), best_counts[idx].tolist())


def _greedy_by_objective(pool: ValPool, steps: int, init_size: int, objective: Objective) -> Ensemble:
    """``greedy_selection`` ranked by ``objective`` (then log loss): every step scores each candidate mixture."""
    y = pool.labels
    init = single_order(pool, "log_loss", objective)[:init_size]
    counts = np.zeros(len(pool.keys), dtype=np.int64)
    counts[init] = 1
    total = _log_sum(pool.log_probs[init])
    t = int(counts.sum())

    def rank_of(mixture: np.ndarray, what: str) -> tuple[float, float]:
        return objective.loss(objective.value(probabilities(mixture), "val", what)), nll(mixture, y, pool.eps)

    best, best_counts = rank_of(total - math.log(t), "the greedy ensemble's start"), counts.copy()
    for step in range(1, steps + 1):
        ranks = [rank_of(_mix(total, lp, t), f"greedy step {step} adding {describe(key)}")
                 for key, lp in zip(pool.keys, pool.log_probs, strict=True)]
        i = min(range(len(ranks)), key=lambda j: (ranks[j], j))  # ties: key order
        counts[i] += 1
        np.logaddexp(total, pool.log_probs[i], out=total)
        t += 1
        if ranks[i] < best:
            best, best_counts = ranks[i], counts.copy()
    idx = np.flatnonzero(best_counts)
    return _ensemble("greedy", pool, idx.tolist(), best_counts[idx].tolist(), objective)


def _log_sum(log_probs: np.ndarray) -> np.ndarray:
    """``log`` of the summed probabilities of ``log_probs`` (k, n, C), in float64."""
    return np.logaddexp.reduce(log_probs.astype(np.float64), axis=0)


# -- test metrics: only after the members are fixed -------------------------------------------


def score_members(members: Sequence[Member], cands: Sequence[Candidate], y: np.ndarray,
                  eps: float | None = None) -> tuple[float, float]:
    """(accuracy, log loss) of the weighted members on the candidates' test predictions (``eps``: as ValPool.of)."""
    mixture, y = _test_mixture(members, cands, y)
    return accuracy(mixture, y), nll(mixture, y, clip_of(cands) if eps is None else eps)


def _test_mixture(members: Sequence[Member], cands: Sequence[Candidate], y: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The weighted members' averaged test log-probabilities, and the checked test labels."""
    by_key = {c.key: c for c in cands}
    arrays = []
    for m in members:
        if m.key not in by_key:
            raise ConfigError(f"members: {m.key} is not among the candidates")
        c = by_key[m.key]
        if c.test_probs is None:
            raise ConfigError(f"test_probs: missing for {m.key}")
        _check_rows("test_probs", np.asarray(c.test_probs), c.log)
        arrays.append(c.log_probs("test"))
    mixture = log_average(arrays, [m.weight for m in members])
    return mixture, _check_labels("y_test", y, mixture.shape[0], mixture.shape[1])


def with_test_metrics(ensemble: Ensemble, cands: Sequence[Candidate], y_test: np.ndarray,
                      objective: Objective | None = None, eps: float | None = None) -> Ensemble:
    """A copy of ``ensemble`` with test metrics (and the objective's test value) filled in; members untouched.
    ``eps``: the log-loss floor the validation side used (None: ``clip_of(cands)``)."""
    mixture, y = _test_mixture(ensemble.members, cands, y_test)
    value = (None if objective is None
             else objective.value(probabilities(mixture), "test", f"the {ensemble.method} ensemble"))
    return replace(ensemble, test_accuracy=accuracy(mixture, y),
                   test_log_loss=nll(mixture, y, clip_of(cands) if eps is None else eps), test_objective=value)


def build_all(
    cands: Sequence[Candidate],
    y_val: np.ndarray,
    y_test: np.ndarray | None = None,
    k: int = 5,
    *,
    metric: str = "accuracy",
    n_checkpoints: int = 5,
    which: str = "best",
    greedy_steps: int = 40,
    init_size: int = 5,
    greedy_metric: str = "log_loss",
    seed_groups: Sequence[Sequence[int]] = (),
    objective: Objective | None = None,
) -> list[Ensemble]:
    """Single best, top-k, checkpoints of the best trial, EMA (if any), greedy: chosen on val.

    Selection gets only the ``ValPool``; test metrics are attached afterwards, and stay None
    for an ensemble with a member that has no test predictions. An ``objective`` ranks in every
    builder instead of ``metric`` and ``greedy_metric``.
    """
    pool = ValPool.of(cands, y_val)  # the floor of log losses: clip_of(cands), on test as on validation
    ranking = {"metric": metric, "objective": objective}
    built = [best_single(pool, **ranking), top_k(pool, k=k, **ranking)]
    weights = {key.weights for key in pool.keys}
    if "raw" in weights:
        built.append(checkpoint_ensemble(pool, n=n_checkpoints, which=which, **ranking))
    if "ema" in weights:
        built.append(ema_ensemble(pool, k=k, **ranking))
    seeds = seed_ensemble(pool, groups=seed_groups, **ranking)
    if seeds is not None:
        built.append(seeds)
    built.append(greedy_selection(pool, steps=greedy_steps, init_size=init_size, metric=greedy_metric,
                                  objective=objective))
    if y_test is None:
        return built
    has_test = {c.key for c in cands if c.test_probs is not None}
    return [with_test_metrics(e, cands, y_test, objective, pool.eps) if all(m.key in has_test for m in e.members)
            else e
            for e in built]


def choose_best(ensembles: Sequence[Ensemble], metric: str = "accuracy", objective: Objective | None = None,
                ) -> Ensemble:
    """The ensemble to report, by validation only (default accuracy, then log loss; the objective when given).

    Exact ties go to the earlier one, which in ``build_all`` order is the simpler ensemble.
    """
    _check_metric(metric)
    if not ensembles:
        raise ConfigError("ensembles: empty list")
    return min(ensembles, key=lambda e: ensemble_rank(e, metric, objective))
