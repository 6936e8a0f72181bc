"""Coarse to fine: the next stage's ranges, boxed around the best trials of this one.

Everything happens in each distribution's sampling scale (log10 for learning rates,
``-log10(1 - beta)`` for momentum-like betas), so "zoom in" means the same thing on
every parameter. A best value on the edge of its range is a warning sign (the optimum
may lie beyond): the next stage then extends past that edge instead of narrowing,
unless the edge is a hard limit (dropout < 1, beta < 1, integers >= 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.errors import ConfigError, SpaceError
from orchestrator.search.space import Choice, Distribution, SearchSpace, shown_value

Result = tuple[Mapping[str, Any], float]  # (config, score), higher is better
_NUDGE = 1e-7  # of a scale width: how far inside an open limit a bound stays
CHOICE_FLOOR = 3  # an option tried fewer times than this is too little seen to drop


@dataclass(frozen=True)
class EdgeNotice:
    """The best value sat on an edge of a range: the next stage extended it, or a hard limit stopped it."""

    param: str
    side: str  # "low" or "high"
    old_range: tuple[float, float]
    new_range: tuple[float, float]
    extended: bool
    hard_limit: bool
    value: Any = None  # the best trial's value

    def message(self) -> str:
        where = f"best {self.param} = {self.value!r} sits at the {'upper' if self.side == 'high' else 'lower'} edge"
        old, new = (", ".join(shown_value(float(x), 6) for x in r) for r in (self.old_range, self.new_range))
        if self.extended:
            return f"{where} of [{old}]: range extended to [{new}]"
        if self.hard_limit:
            return f"{where} of [{old}], which is a hard limit"
        return f"{where} of its range [{old}]: the optimum may lie beyond"


@dataclass(frozen=True)
class NarrowResult:
    space: SearchSpace
    edges: list[EdgeNotice]


def top_results(results: Sequence[Result], top_fraction: float, min_top: int) -> list[Result]:
    """The best ``max(min_top, ceil(top_fraction * n))`` results with a finite score, best first (stable)."""
    finite = [(c, float(s)) for c, s in results if s is not None and math.isfinite(float(s))]
    ranked = sorted(finite, key=lambda r: -r[1])
    return ranked[: max(min_top, math.ceil(top_fraction * len(ranked)))]


def narrow_space(
    space: SearchSpace,
    results: Sequence[Result],
    top_fraction: float = 0.25,
    margin: float = 0.15,
    min_top: int = 3,
    choice_floor: int = CHOICE_FLOOR,
    edge_tolerance: float = 0.05,
    extend: float = 0.5,
    min_width: float = 0.05,
) -> NarrowResult:
    """The next stage's space and the edge notices that explain any extension.

    Numeric parameters: the box spanned by the top trials (in sampling scale) plus
    ``margin`` x old width each side, kept inside the old range and at least ``min_width``
    x old width wide. If the best trial lies within ``edge_tolerance`` x width of an edge,
    that side moves ``extend`` x width outward instead (up to the hard limits).
    Choices keep the options seen among the top trials, plus any tried fewer than
    ``choice_floor`` times overall (too few to judge). Fewer than ``min_top`` finished
    trials: the space is returned unchanged.

    Each parameter looks only at the top trials in which it was active (value not ``None``;
    conditional parameters): with fewer than ``min_top`` of those it keeps its range, because
    a box or an edge drawn from one or two trials (or from values the trials ignored) means nothing.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ConfigError(f"top_fraction: must lie in (0, 1], got {top_fraction!r}")
    if min_top < 1:
        raise ConfigError(f"min_top: must be at least 1, got {min_top!r}")
    top = top_results(results, top_fraction, min_top)
    if len(top) < min_top:
        return NarrowResult(space, [])
    new: dict[str, Any] = {}
    edges: list[EdgeNotice] = []
    for name, dist in space.searched.items():
        active_top = [c for c, _ in top if c.get(name) is not None]  # best first, like top
        if len(active_top) < min_top:
            continue
        best = active_top[0]
        if isinstance(dist, Choice):
            tried = [c.get(name) for c, _ in results if c.get(name) is not None]
            new[name] = narrow_choice(dist, tried, [c[name] for c in active_top], choice_floor)
            continue
        xs = [dist.to_scale(c[name]) for c in active_top]
        a, b = _box(dist, min(xs), max(xs), margin, min_width)
        lo, hi = _value_edges(dist)
        width = dist.scale_high - dist.scale_low
        sides = _edge_sides(dist, dist.to_scale(best[name]), edge_tolerance)
        if "low" in sides and not _at_limit(dist, "low"):
            a = lo - extend * width
        if "high" in sides and not _at_limit(dist, "high"):
            b = hi + extend * width
        new[name] = _rebuilt(dist, a, b)
        for side in sides:
            old_range, new_range = (dist.low, dist.high), (new[name].low, new[name].high)
            hard = _at_limit(dist, side)
            # Extended means moved past this edge: the other side narrowing (extend_edges = false) is no extension.
            moved = new_range[0] < old_range[0] if side == "low" else new_range[1] > old_range[1]
            edges.append(
                EdgeNotice(
                    name,
                    side,
                    old_range,
                    new_range,
                    extended=not hard and moved,
                    # An extension its limits stopped short of one more value (an integer range limited at 4.5) or
                    # float precision stopped (a beta a hair below 1) is a hard limit too, not extend_edges = false.
                    hard_limit=hard or _at_limit(new[name], side) or (extend > 0 and not moved),
                    value=best[name],
                )
            )
    return NarrowResult(space.replace(**new), edges)


def narrow_choice(dist: Choice, tried: Sequence[Any], top: Sequence[Any], floor: int) -> Choice:
    """Options seen among the top, plus those tried fewer than ``floor`` times; original order, never empty."""
    keep = [o for o in dist.options if o in top or sum(1 for t in tried if t == o) < floor]
    return dist.with_options(keep or [top[0] if top and top[0] in dist.options else dist.options[0]])


def edge_warnings(space: SearchSpace, best_config: Mapping[str, Any], tolerance: float = 0.05) -> list[EdgeNotice]:
    """Numeric parameters whose best value sits within ``tolerance`` x width of an edge of its range."""
    notices = []
    for name, dist in space.searched.items():
        if isinstance(dist, Choice) or best_config.get(name) is None:
            continue
        for side in _edge_sides(dist, dist.to_scale(best_config[name]), tolerance):
            rng = (dist.low, dist.high)
            notices.append(
                EdgeNotice(
                    name, side, rng, rng, extended=False, hard_limit=_at_limit(dist, side), value=best_config[name]
                )
            )
    return notices


def explored_space(spaces: Sequence[SearchSpace], base: SearchSpace) -> SearchSpace:
    """``base`` with each numeric range widened to the hull of that parameter's ranges in ``spaces``: what the stages
    searched together. The end-of-run border check looks at its edges: a best value on the edge of a later stage's
    narrowed (or moved) range, with an earlier stage's samples on the other side of it, is no sign that the next
    sweep should look beyond it."""
    wider: dict[str, Distribution] = {}
    for name, dist in base.searched.items():
        if isinstance(dist, Choice):
            continue
        ranges = [(s[name].low, s[name].high) for s in spaces if type(s.get(name)) is type(dist)]
        low, high = min([dist.low, *(r[0] for r in ranges)]), max([dist.high, *(r[1] for r in ranges)])
        if (low, high) != (dist.low, dist.high):
            wider[name] = replace(dist, low=low, high=high)
    return base.replace(**wider) if wider else base


# -- helpers (all in sampling scale) ---------------------------------------------------------


def _value_edges(dist: Distribution) -> tuple[float, float]:
    """The scale positions of the extreme values: for integers, of low and high rather than the
    edges of their slices, because ``with_scale_bounds`` rounds scale bounds to the nearest integer."""
    return dist.to_scale(dist.low), dist.to_scale(dist.high)


def _edge_sides(dist: Distribution, x: float, tolerance: float) -> list[str]:
    lo, hi = _value_edges(dist)
    tol = tolerance * (dist.scale_high - dist.scale_low)
    return [side for side, near in (("low", x <= lo + tol), ("high", x >= hi - tol)) if near]


def _at_limit(dist: Distribution, side: str) -> bool:
    lo, hi = _value_edges(dist)
    lim_lo, lim_hi = dist.scale_limits
    eps = 10 * _NUDGE * (dist.scale_high - dist.scale_low)
    return lo <= lim_lo + eps if side == "low" else hi >= lim_hi - eps


def _box(dist: Distribution, x_min: float, x_max: float, margin: float, min_width: float) -> tuple[float, float]:
    """The top trials' span plus margins, inside the old range, at least ``min_width`` x its scale width."""
    lo, hi = _value_edges(dist)
    width = dist.scale_high - dist.scale_low
    a, b = max(lo, x_min - margin * width), min(hi, x_max + margin * width)
    short = min_width * width - (b - a)
    if short > 0:  # widen around the centre, shifting back inside the old range
        a, b = a - short / 2, b + short / 2
        a, b = (lo, lo + min_width * width) if a < lo else (a, b)
        a, b = (hi - min_width * width, hi) if b > hi else (a, b)
    return a, b


def _rebuilt(dist: Distribution, a: float, b: float) -> Distribution:
    """``dist`` with scale bounds ``[a, b]``, clipped to its limits.

    An open limit (beta > 0) refuses a bound exactly on it, so a second try stays a hair
    inside; if rounding still breaks it (beta so close to 1 that it rounds to 1.0), keep ``dist``.
    """
    lim_lo, lim_hi = dist.scale_limits
    nudge = _NUDGE * (dist.scale_high - dist.scale_low)
    for lo, hi in ((a, b), (max(a, lim_lo + nudge), min(b, lim_hi - nudge))):
        candidate = dist.with_scale_bounds(lo, hi)
        try:
            candidate.validate()
        except SpaceError:
            continue
        return candidate
    return dist
