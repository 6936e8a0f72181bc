"""Search spaces: distributions that map to and from the unit interval in their sampling scale.

Every distribution has a *sampling scale* (linear, log10, or log10 of ``1 - beta``) and a
pair of bounds ``scale_low < scale_high`` in that scale. Sampling draws ``u ~ U[0, 1)``
and maps it linearly into the scale; narrowing and edge extension (coarse to fine) work
on the scale bounds, so "zoom around the best learning rates" is a box in log10(lr).

A distribution may carry a condition (``when={"optimizer": ["momentum", "nesterov"]}``): it is
active only when every named parameter is active and takes one of the listed values. Inactive
parameters are still sampled (the unit cube keeps its dimensions, so seeds stay reproducible)
and then set to ``None`` in the config.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from orchestrator.errors import SpaceError, did_you_mean
from orchestrator.search.conditions import Condition, condition_order, normalize_condition

_INF = math.inf

# What a config value may be: the trials table types each parameter's column from its values,
# and None is kept for an inactive conditional parameter.
SCALAR_TYPES = (str, int, float, bool)


def plain_value(value: Any) -> Any:
    """A numpy scalar (an option taken from ``np.array([8, 16])``) as the Python value it holds."""
    return value.item() if isinstance(value, np.generic) else value


def shown_value(value: Any, digits: int = 3) -> str:
    """A config value as short text: ``digits`` significant digits for a float, more where fewer would read as 1 or
    -1 (a beta2 of 0.9996 is not 1, which Adam refuses: a config copied from a table must be the one that trained)."""
    if not isinstance(value, float):
        return str(value)
    text = f"{value:.{digits}g}"
    while abs(float(text)) == 1.0 and float(text) != value and digits < 17:
        digits += 1
        text = f"{value:.{digits}g}"
    return text


def _got(value: Any) -> str:
    """``tuple (16, 8)``: the type, and the value where its repr is short data (never a module's many lines)."""
    if value is None:
        return "None"
    text = repr(value)
    shown = isinstance(value, (tuple, list, dict, set)) and len(text) <= 60 and "\n" not in text
    return f"{type(value).__name__} {text}" if shown else type(value).__name__


def _advice(value: Any) -> str:
    """How to say ``value`` with a scalar instead."""
    if value is None:
        return ('None marks an inactive conditional parameter, so use a value that means "off" instead '
                '(inf for grad_clip, 0 for weight_decay, or a string such as "none" that build_model reads)')
    if isinstance(value, (tuple, list)) and all(isinstance(v, SCALAR_TYPES) for v in value):
        example = "-".join(str(v) for v in value)
        return f'name it as a string ("{example}") and parse it in build_model'
    return "name it as a string and map the name to the object in build_model"


@dataclass(frozen=True)
class Distribution:
    """Base: a range in a sampling scale, with hard limits that range changes never cross."""

    low: float
    high: float
    name: str = ""
    limits: tuple[float, float] = (-_INF, _INF)
    kind: str = field(default="float", init=False)
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (parameter, allowed values) pairs, all must hold

    def __post_init__(self) -> None:
        # numpy bounds become Python numbers, so every sampled config holds plain values
        object.__setattr__(self, "low", plain_value(self.low))
        object.__setattr__(self, "high", plain_value(self.high))

    @property
    def condition(self) -> dict[str, tuple[Any, ...]]:
        return dict(self.when)

    # -- scale: subclasses override these two for log-like scales ---------------------
    def to_scale(self, value: float) -> float:
        return float(value)

    def from_scale(self, x: float) -> float:
        return float(x)

    # -- derived ------------------------------------------------------------------------
    @property
    def scale_low(self) -> float:
        return self.to_scale(self.low)

    @property
    def scale_high(self) -> float:
        return self.to_scale(self.high)

    @property
    def scale_limits(self) -> tuple[float, float]:
        """Hard limits in the sampling scale (may be infinite)."""
        lo, hi = self.limits
        return (self._limit_to_scale(lo, -_INF), self._limit_to_scale(hi, _INF))

    def _limit_to_scale(self, limit: float, unbounded: float) -> float:
        try:
            x = self.to_scale(limit)
        except (ValueError, ZeroDivisionError, OverflowError):
            return unbounded
        return x if math.isfinite(x) else unbounded

    def from_unit(self, u: float) -> Any:
        a, b = self.scale_low, self.scale_high
        return self._finish(self.from_scale(a + float(u) * (b - a)))

    def to_unit(self, value: Any) -> float:
        a, b = self.scale_low, self.scale_high
        return (self.to_scale(value) - a) / (b - a)

    def _finish(self, value: float) -> Any:
        return min(max(value, self.low), self.high)

    def sample(self, rng: np.random.Generator) -> Any:
        return self.from_unit(rng.random())

    def with_scale_bounds(self, scale_low: float, scale_high: float) -> Distribution:
        """A copy whose range is ``[scale_low, scale_high]`` in the sampling scale, kept inside limits."""
        lim_lo, lim_hi = self.scale_limits
        scale_low, scale_high = max(scale_low, lim_lo), min(scale_high, lim_hi)
        low, high = self.from_scale(scale_low), self.from_scale(scale_high)
        return self._rebuilt(low, high)

    def _rebuilt(self, low: float, high: float) -> Distribution:
        return replace(self, low=low, high=high)

    def validate(self) -> None:
        n = self.name or "<unnamed>"
        if isinstance(self.low, bool) or isinstance(self.high, bool):  # TOML low = true: a bool is an int to Python
            raise SpaceError(f"parameter '{n}': bounds must be numbers, got [{self.low!r}, {self.high!r}]")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise SpaceError(f"parameter '{n}': bounds must be finite numbers, got [{self.low}, {self.high}]")
        if self.low == self.high:  # randint(4, 4): one value, which the space takes as a plain number
            raise SpaceError(f"parameter '{n}': low and high are both {self.low}, a range of one value; to fix it, "
                             f"give the value itself ('{n}': {self.low})")
        if self.low > self.high:
            raise SpaceError(f"parameter '{n}': low ({self.low}) must be below high ({self.high})")
        lo, hi = self.limits
        if self.low < lo or self.high > hi:
            raise SpaceError(f"parameter '{n}': range [{self.low}, {self.high}] leaves its limits [{lo}, {hi}]")

    def describe(self) -> str:
        return f"{type(self).__name__}({self.low:g}, {self.high:g})"

    @property
    def log_scale(self) -> bool:
        return False


@dataclass(frozen=True)
class Uniform(Distribution):
    """Linear in ``[low, high]``: dropout, layer fractions, anything without a log structure."""


@dataclass(frozen=True)
class LogUniform(Distribution):
    """``10 ** uniform(log10(low), log10(high))``: learning rates, weight decay, epsilon."""

    limits: tuple[float, float] = (0.0, _INF)

    def to_scale(self, value: float) -> float:
        return math.log10(value)

    def from_scale(self, x: float) -> float:
        return 10.0**x

    def validate(self) -> None:
        if self.low <= 0 or self.high <= 0:
            raise SpaceError(f"parameter '{self.name}': log range must be positive, got [{self.low}, {self.high}]")
        super().validate()

    @property
    def log_scale(self) -> bool:
        return True


@dataclass(frozen=True)
class OneMinusLogUniform(Distribution):
    """Momentum-like beta: ``1 - beta`` is log-uniform, so 0.9 -> 0.999 is even in averaging window.

    The scale is ``-log10(1 - beta)`` (increasing in beta): 0.9 -> 1, 0.99 -> 2, 0.999 -> 3.
    """

    limits: tuple[float, float] = (0.0, 1.0)

    def to_scale(self, value: float) -> float:
        return -math.log10(1.0 - value)

    def from_scale(self, x: float) -> float:
        return 1.0 - 10.0 ** (-x)

    def validate(self) -> None:
        if not (0.0 < self.low < 1.0 and 0.0 < self.high < 1.0):
            raise SpaceError(
                f"parameter '{self.name}': beta range must lie inside (0, 1), got [{self.low}, {self.high}]"
            )
        super().validate()

    @property
    def log_scale(self) -> bool:
        return True


@dataclass(frozen=True)
class RandInt(Distribution):
    """Integers in ``[low, high]`` (both inclusive), linear: layer counts."""

    limits: tuple[float, float] = (1.0, _INF)
    kind: str = field(default="int", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        # randint(1, 1e3): a whole float bound is that integer, so the range's own ends (the contract check's probes,
        # the stored space) are ints like every value it draws, never a 1000.0 that nn.Linear refuses
        for end in ("low", "high"):
            value = getattr(self, end)
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(self, end, int(value))

    # Each integer owns an equal slice of the scale: [low - 0.5, high + 0.5].
    @property
    def scale_low(self) -> float:
        return self.to_scale(self.low - 0.5)

    @property
    def scale_high(self) -> float:
        return self.to_scale(self.high + 0.5)

    def _finish(self, value: float) -> int:
        return int(min(max(round(value), self.low), self.high))

    def _rebuilt(self, low: float, high: float) -> Distribution:
        lo_i, hi_i = math.ceil(low - 1e-9), math.floor(high + 1e-9)
        lo_i = max(lo_i, math.ceil(self.limits[0]) if math.isfinite(self.limits[0]) else lo_i)
        hi_i = min(hi_i, math.floor(self.limits[1]) if math.isfinite(self.limits[1]) else hi_i)
        if hi_i <= lo_i:  # keep at least two integers so the range stays a range...
            hi_i = lo_i + 1
            if hi_i > self.high and lo_i - 1 >= max(self.low, self.limits[0]):
                lo_i, hi_i = lo_i - 1, lo_i  # ...on the inside: narrowing never quietly steps past the range
        return replace(self, low=lo_i, high=hi_i)

    def with_scale_bounds(self, scale_low: float, scale_high: float) -> Distribution:
        lim_lo, lim_hi = self.scale_limits
        low = self.from_scale(max(scale_low, lim_lo))
        high = self.from_scale(min(scale_high, lim_hi))
        return self._rebuilt(math.ceil(low - 0.5), math.floor(high + 0.5))

    def validate(self) -> None:
        if int(self.low) != self.low or int(self.high) != self.high:
            raise SpaceError(f"parameter '{self.name}': integer bounds required, got [{self.low}, {self.high}]")
        if self.low < 1 and self.limits == (1.0, _INF):  # the default limits, which the user never wrote
            raise SpaceError(f"parameter '{self.name}': a randint stays at 1 or more unless its limits say otherwise "
                             f"(got low {self.low}); write limits=({self.low}, ...) to search from {self.low}")
        super().validate()

    def describe(self) -> str:
        return f"{type(self).__name__}({int(self.low)}, {int(self.high)})"


@dataclass(frozen=True)
class LogRandInt(RandInt):
    """Integers in ``[low, high]`` spaced evenly in log scale: hidden units, batch size."""

    def to_scale(self, value: float) -> float:
        return math.log10(value)

    def from_scale(self, x: float) -> float:
        return 10.0**x

    @property
    def scale_low(self) -> float:
        return self.to_scale(max(self.low - 0.5, 0.5))

    def validate(self) -> None:
        if self.low < 1:
            raise SpaceError(f"parameter '{self.name}': log integer range must start at 1 or more, got {self.low}")
        super().validate()

    @property
    def log_scale(self) -> bool:
        return True


@dataclass(frozen=True)
class Choice(Distribution):
    """One of a list of options, each equally likely. Narrowing keeps a subset."""

    options: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 1.0
    kind: str = field(default="categorical", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "options", tuple(plain_value(o) for o in self.options))

    def from_unit(self, u: float) -> Any:
        index = min(int(float(u) * len(self.options)), len(self.options) - 1)
        return self.options[index]

    def to_unit(self, value: Any) -> float:
        return (self.options.index(value) + 0.5) / len(self.options)

    def with_options(self, options: Sequence[Any]) -> Choice:
        return replace(self, options=tuple(options))

    def with_scale_bounds(self, scale_low: float, scale_high: float) -> Distribution:
        return self

    def validate(self) -> None:
        if len(self.options) == 0:
            raise SpaceError(f"parameter '{self.name}': choice needs at least one option")
        unstorable = [o for o in self.options if not isinstance(o, SCALAR_TYPES)]
        if unstorable:  # named by the longest, the clearest example of how to spell it as a string
            option = max(unstorable, key=lambda o: len(o) if isinstance(o, (tuple, list)) else 0)
            raise SpaceError(f"parameter '{self.name}': choice options must be str, int, float or bool "
                             f"(got {_got(option)}); {_advice(option)}")
        if len(set(map(repr, self.options))) != len(self.options):
            raise SpaceError(f"parameter '{self.name}': choice options must be distinct")
        types = {type(o) for o in self.options}
        if len(types) > 1 and not types <= {int, float}:
            raise SpaceError(
                f"parameter '{self.name}': choice options must share one type, got {sorted(t.__name__ for t in types)}"
            )

    def describe(self) -> str:
        return f"choice({list(self.options)!r})"


# -- constructors users write in task files ------------------------------------------------


# ``limits=(lo, hi)``: hard bounds no stage ever samples outside. Coarse to fine may move a range past
# its declared ``[low, high]`` when the best value sits on an edge (``extend_edges``, on by default),
# but never past its limits. ``limits=(low, high)`` makes the declared range itself hard. Each
# distribution's natural domain (lr > 0, 0 < beta < 1, integers >= 1) always applies as well, and a
# ``uniform`` range on one side of zero keeps that side unless its limits say otherwise.
Limits = tuple[float, float] | None


def _limits(name: str, limits: Limits, natural: tuple[float, float],
            default: tuple[float, float] | None = None) -> tuple[float, float]:
    """User limits, inside the distribution's natural domain; refused with one line when they are not a range.

    ``default`` stands in when no limits are given (integers: 1 and up, for counts of layers or units).
    """
    if limits is None:
        return default or natural
    try:
        lo, hi = (float(x) for x in limits)
    except (TypeError, ValueError):
        raise SpaceError(f"{name}: limits must be two numbers (low, high), got {limits!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo >= hi:
        raise SpaceError(f"{name}: limits ({lo:g}, {hi:g}) must be a range with low below high")
    return (max(lo, natural[0]), min(hi, natural[1]))


def uniform(low: float, high: float, *, limits: Limits = None, when: Condition = None) -> Uniform:
    """Linear. A range on one side of zero stays there unless ``limits`` say otherwise: ``uniform(0, 0.5)`` (a
    dropout rate, label smoothing, a weight) extended past its low edge would give negative values."""
    side = (0.0, _INF) if float(low) >= 0 else (-_INF, 0.0) if float(high) <= 0 else (-_INF, _INF)
    return Uniform(float(low), float(high), limits=_limits("uniform", limits, (-_INF, _INF), side),
                   when=normalize_condition(when))


def loguniform(low: float, high: float, *, limits: Limits = None, when: Condition = None) -> LogUniform:
    return LogUniform(float(low), float(high), limits=_limits("loguniform", limits, (0.0, _INF)),
                      when=normalize_condition(when))


def one_minus_loguniform(low: float, high: float, *, limits: Limits = None,
                         when: Condition = None) -> OneMinusLogUniform:
    return OneMinusLogUniform(float(low), float(high), limits=_limits("one_minus_loguniform", limits, (0.0, 1.0)),
                              when=normalize_condition(when))


def randint(low: int, high: int, *, limits: Limits = None, when: Condition = None) -> RandInt:
    return RandInt(low, high, limits=_limits("randint", limits, (-_INF, _INF), (1.0, _INF)),
                   when=normalize_condition(when))


def lograndint(low: int, high: int, *, limits: Limits = None, when: Condition = None) -> LogRandInt:
    return LogRandInt(low, high, limits=_limits("lograndint", limits, (1.0, _INF)), when=normalize_condition(when))


def choice(options: Sequence[Any], *, when: Condition = None) -> Choice:
    """Options are never extended: a choice samples only what it lists (narrowing may drop some)."""
    if isinstance(options, (str, bytes)):  # iterating it would search its letters ("sgd": "s", "g", "d")
        raise SpaceError(f"choice: options must be a list, got the string {options!r}; write [{options!r}]")
    if isinstance(options, (set, frozenset)):  # its order changes from process to process (Python's hash seed), and
        # the order decides which option a draw picks: the same seed would sample other configs in each run
        listed = sorted(options, key=repr)
        raise SpaceError(f"choice: options must be a list, got a set, whose order (and so the configs a seed draws) "
                         f"changes from run to run; write {listed!r}")
    return Choice(options=tuple(options), when=normalize_condition(when))


def dropout(low: float = 0.0, high: float = 0.5, *, limits: Limits = None, when: Condition = None) -> Uniform:
    """Dropout rate: linear, never leaves [0, 1)."""
    return Uniform(float(low), float(high), limits=_limits("dropout", limits, (0.0, 0.999)),
                   when=normalize_condition(when))


_CONSTRUCTORS = {
    "uniform": uniform,
    "loguniform": loguniform,
    "one_minus_loguniform": one_minus_loguniform,
    "randint": randint,
    "lograndint": lograndint,
    "choice": choice,
    "dropout": dropout,
}


class SearchSpace(Mapping[str, Any]):
    """Ordered parameters: each a :class:`Distribution` or a fixed value (int, float, str, bool)."""

    def __init__(self, params: Mapping[str, Any]):
        self._params: dict[str, Any] = {}
        for name, value in params.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise SpaceError(f"parameter {name!r}: names must be identifiers")
            value = plain_value(value)
            if isinstance(value, Distribution):
                value = replace(value, name=name)
                value.validate()
            elif not isinstance(value, SCALAR_TYPES) and value is not None:
                raise SpaceError(_bad_fixed_value(name, value))
            self._params[name] = value
        self._order = condition_order(self._params)

    def __getitem__(self, name: str) -> Any:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={_describe(v)}" for k, v in self.items())
        return f"SearchSpace({body})"

    @property
    def searched(self) -> dict[str, Distribution]:
        return {k: v for k, v in self._params.items() if isinstance(v, Distribution)}

    @property
    def fixed(self) -> dict[str, Any]:
        return {k: v for k, v in self._params.items() if not isinstance(v, Distribution)}

    def from_unit(self, point: Sequence[float], *, deactivate: bool = True) -> dict[str, Any]:
        """Map one point of the unit cube (one coordinate per searched parameter) to a config."""
        searched = self.searched
        if len(point) != len(searched):
            raise SpaceError(f"point has {len(point)} coordinates, space searches {len(searched)} parameters")
        values = {name: dist.from_unit(u) for (name, dist), u in zip(searched.items(), point)}
        config = {name: values.get(name, value) for name, value in self._params.items()}
        return self.deactivate(config) if deactivate else config

    def misfit(self, config: object) -> str | None:
        """How a config a plug-in made misses this space's parameters (``"lacks 'act'"``), or None when it has each
        one and no other: a key the space lacks reached the worker and did nothing (``epochs`` comes from the plan)."""
        if not isinstance(config, Mapping):
            return f"is a {type(config).__name__}, not a dict of the space's parameters"
        missing = [name for name in self._params if name not in config]
        if missing:
            return f"lacks {', '.join(map(repr, missing))}"
        extra = [name for name in config if name not in self._params]
        if extra:
            return f"has {', '.join(map(repr, extra))}, which the space does not (the plan sets the epochs)"
        return None

    def deactivate(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` with every parameter whose condition fails set to ``None`` (parents decided first)."""
        out = dict(config)
        for name in self._order:
            dist = self._params[name]
            if not all(out.get(parent) is not None and out[parent] in values for parent, values in dist.when):
                out[name] = None
        return out

    @property
    def conditional(self) -> dict[str, dict[str, tuple[Any, ...]]]:
        """Conditions by parameter, for parameters that have one."""
        return {k: v.condition for k, v in self.searched.items() if v.when}

    def to_unit(self, config: Mapping[str, Any]) -> list[float]:
        """Unit coordinates of a config; an inactive (``None``) parameter maps to NaN."""
        return [
            math.nan if config[name] is None else dist.to_unit(config[name]) for name, dist in self.searched.items()
        ]

    def replace(self, **params: Any) -> SearchSpace:
        """A new space with some parameters replaced; unknown names are refused."""
        for name in params:
            if name not in self._params:
                raise SpaceError(f"parameter '{name}': not in the search space{did_you_mean(name, self._params)} "
                                 f"(known: {', '.join(self._params)})")
        merged = {**self._params, **params}
        for name, value in merged.items():  # a narrowed parent choice narrows the conditions naming it
            if isinstance(value, Distribution) and value.when:
                merged[name] = replace(
                    value,
                    when=tuple(
                        (parent, self._trimmed(parent, values, merged.get(parent))) for parent, values in value.when
                    ),
                )
        return SearchSpace(merged)

    def _trimmed(self, parent: str, values: tuple[Any, ...], new_parent: Any) -> tuple[Any, ...]:
        old_parent = self._params.get(parent)
        if not (isinstance(old_parent, Choice) and isinstance(new_parent, Choice)):
            return values
        return tuple(v for v in values if v in new_parent.options or v not in old_parent.options)

    def with_overrides(self, overrides: Mapping[str, Any]) -> SearchSpace:
        """Apply TOML-style overrides: ``{"lr": {"dist": "loguniform", "low": 1e-4, "high": 1}, "hidden": 64}``.

        A new range of the same kind keeps the task's ``when`` and ``limits`` unless it gives its own (``when = {}``
        drops the condition): a range alone would quietly draw a momentum for the adam trials, then narrow and rank
        on it, and extend ``lr`` past the limit the task set. A fixed value keeps the ``when`` too."""
        return self.replace(**{name: parse_param(name, self._inherited(name, spec))
                               for name, spec in overrides.items()})

    def _inherited(self, name: str, spec: Any) -> Any:
        declared = self._params.get(name)
        if not isinstance(declared, Distribution):
            return spec
        kept = param_to_dict(declared)
        if not isinstance(spec, Mapping):  # beta1 = 0.9 for a beta1 drawn only when optimizer = adam: a one-option
            # choice keeps the condition (a fixed value cannot carry one, and 0.9 would reach the sgd trials too)
            return {"dist": "choice", "options": [spec], "when": kept["when"]} if "when" in kept and \
                not isinstance(spec, (list, tuple)) else spec
        spec = spec if "dist" in spec else {"dist": kept["dist"], **spec}  # lr = { low = 1e-4, high = 1e-2 }: its kind
        spec = {**spec, "when": kept["when"]} if "when" not in spec and "when" in kept else spec
        if "limits" not in spec and "limits" in kept and spec.get("dist") == kept["dist"] and \
                declared.limits != _default_limits(name, kept):
            spec = {**spec, "limits": kept["limits"]}
        return spec

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for events and the stages table): the inverse of :func:`parse_param`."""
        return {name: param_to_dict(value) for name, value in self._params.items()}


def _default_limits(name: str, stored: Mapping[str, Any]) -> tuple[float, float]:
    """The limits a stored range's kind gives its declared range when none are written: a ``uniform(-0.2, 0.2)``'s
    open sides are no limits a new range of it should keep (``uniform(0, 0.3)`` keeps to 0 and up), but a dropout's
    (0, 0.999) or a ``limits=`` the task wrote are."""
    return parse_param(name, {key: stored[key] for key in ("dist", "low", "high")}).limits


def _bad_fixed_value(name: str, value: Any) -> str:
    meant_options = isinstance(value, (list, np.ndarray))
    advice = "to search options write choice([...])" if meant_options else _advice(value)
    return (f"parameter '{name}': a fixed value must be str, int, float or bool, or a distribution "
            f"(got {_got(value)}); {advice}")


def _describe(value: Any) -> str:
    if not isinstance(value, Distribution):
        return repr(value)
    when = " and ".join(f"{parent} in {list(values)!r}" for parent, values in value.when)
    return value.describe() + (f" when {when}" if when else "")


def param_to_dict(value: Any) -> Any:
    if not isinstance(value, Distribution):
        return value
    kind = {
        Uniform: "uniform",
        LogUniform: "loguniform",
        OneMinusLogUniform: "one_minus_loguniform",
        RandInt: "randint",
        LogRandInt: "lograndint",
        Choice: "choice",
    }[type(value)]
    if isinstance(value, Choice):
        return _with_when({"dist": kind, "options": list(value.options)}, value)
    out: dict[str, Any] = {"dist": kind, "low": value.low, "high": value.high}
    natural = type(value).__dataclass_fields__["limits"].default
    if (isinstance(value, (Uniform, RandInt)) and not isinstance(value, LogRandInt)) or value.limits != natural:
        # log kinds: only limits the user set (older sweeps read the same). An open side is null, not Infinity:
        # strict JSON readers (Polars' json_path_match, jq, JavaScript) fail on Infinity, and read a whole stored
        # space as null.
        out["limits"] = [bound if math.isfinite(bound) else None for bound in value.limits]
    return _with_when(out, value)


def _with_when(out: dict[str, Any], dist: Distribution) -> dict[str, Any]:
    if dist.when:
        out["when"] = {parent: list(values) for parent, values in dist.when}
    return out


def _stored_limits(limits: Any) -> tuple[float, ...]:
    """Limits as plain data give them: null for an open side (as :func:`param_to_dict` writes it), else numbers."""
    if isinstance(limits, (list, tuple)) and len(limits) == 2:
        return tuple((-_INF, _INF)[side] if bound is None else float(bound) for side, bound in enumerate(limits))
    return tuple(float(x) for x in limits)


def parse_param(name: str, spec: Any) -> Any:
    """Build a parameter from plain data (TOML): a scalar is fixed; a table names its ``dist``."""
    if not isinstance(spec, Mapping):
        if isinstance(spec, (list, tuple)):
            raise SpaceError(
                f"parameter '{name}': write a table like {{ dist = \"choice\", options = [...] }}, not a bare list"
            )
        return spec
    spec = dict(spec)
    kind = spec.pop("dist", None)
    if kind is None:
        raise SpaceError(f"parameter '{name}': a range needs its dist (one of {', '.join(_CONSTRUCTORS)}): "
                         f"{name} = {{ dist = \"loguniform\", low = ..., high = ... }}")
    if kind not in _CONSTRUCTORS:
        raise SpaceError(f"parameter '{name}': unknown dist {kind!r} (one of {', '.join(_CONSTRUCTORS)})")
    fields = [p for p in inspect.signature(_CONSTRUCTORS[kind]).parameters]
    unknown = [key for key in spec if key not in fields]
    if unknown:  # say which field, and what the dist takes: not Python's "unexpected keyword argument"
        raise SpaceError(f"parameter '{name}': {kind} has no field {unknown[0]!r}{did_you_mean(unknown[0], fields)} "
                         f"(its fields: dist, {', '.join(fields)})")
    # The constructors would read true as 1 (a bool is an int to Python) and "1e-3" as a number: refuse, never cast
    bad = [key for key in ("low", "high") if key in spec and (isinstance(spec[key], bool)
                                                              or not isinstance(spec[key], numbers.Real))]
    if bad:
        raise SpaceError(f"parameter '{name}': bounds must be numbers, got {bad[0]} = {spec[bad[0]]!r}")
    try:
        if "limits" in spec:
            spec["limits"] = _stored_limits(spec["limits"])
        dist = replace(_CONSTRUCTORS[kind](**spec), name=name)
        dist.validate()
    except SpaceError as exc:  # the constructors do not know the name ("loguniform: limits ..."): say which
        raise exc if str(exc).startswith("parameter ") else SpaceError(f"parameter '{name}': {exc}") from None
    except (TypeError, ValueError, IndexError) as exc:  # a missing field, or "x" where a number belongs
        raise SpaceError(f"parameter '{name}': bad fields for {kind}: {exc}") from None
    return dist
