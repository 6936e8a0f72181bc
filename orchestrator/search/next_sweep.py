"""Coarse to fine across sweeps: the ranges a next sweep should search, from the trials of this one.

Within a sweep the stages narrow the ranges; its last stage's best trials are where the next sweep should look
(the CS231n notes: search coarse ranges first, then narrow them to where the best results turn up, and move past an
edge the best values sit on). The box closes around the top trials of the last stage that compared several configs
(the one that trained them longest), inside the hull of what every stage searched, with the same margins, edge moves
and limits as the stages' own narrowing. Pure: spaces and (config, score) results in, a space out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.search.narrowing import (
    CHOICE_FLOOR,
    EdgeNotice,
    Result,
    explored_space,
    narrow_choice,
    narrow_space,
    top_results,
)
from orchestrator.search.space import Choice, SearchSpace


@dataclass(frozen=True)
class NextSweep:
    space: SearchSpace  # the declared parameters with the next sweep's ranges and options
    searched: SearchSpace  # every numeric range widened to what the sweep's stages searched together
    edges: list[EdgeNotice]  # each range moved past (or held at) an edge, and why
    stage: int  # the stage (from 0) whose trials it closed around
    top: int  # how many of its trials
    judged: int  # of how many that ended with a score
    best: Mapping[str, Any]  # the config of the best of them
    top_configs: tuple[Mapping[str, Any], ...] = ()  # the configs of all ``top`` of them, best first


def next_sweep_space(declared: SearchSpace, stage_spaces: Sequence[SearchSpace],
                     stage_results: Sequence[Sequence[Result]], *, tried: Sequence[Mapping[str, Any]] | None = None,
                     top_fraction: float = 0.25, extend_edges: bool = True, min_top: int = 3) -> NextSweep | None:
    """The next sweep's space, or None when no stage ended with ``min_top`` different configs scored.

    ``stage_results[i]``: (config, best score) of stage ``i``'s judged trials, higher scores better. A stage that
    trained one config again (a reseed stage) compares no configs and is passed over. Numeric ranges start from the
    hull of every stage's range (a stage's narrowed range says nothing of what earlier stages saw outside it), so an
    edge is one no stage looked past; choices keep the options that stage sampled, less those ``tried`` (configs of
    every trial that ended with a score, pruned ones too: default, the results' own) holds 3 times or more that no best
    trial used. A stage's narrowing counts only its judged trials, so an option every trial of which was pruned
    stays; across sweeps it goes.
    """
    for stage in reversed(range(min(len(stage_spaces), len(stage_results)))):
        results = stage_results[stage]
        if len({tuple(sorted(config.items())) for config, _ in results}) >= min_top:
            break
    else:
        return None
    hull = explored_space(stage_spaces, declared)
    top = [config for config, _ in top_results(results, top_fraction, min_top)]
    tried = [config for scored in stage_results for config, _ in scored] if tried is None else tried
    options = {}
    for name, dist in stage_spaces[stage].searched.items():
        if isinstance(dist, Choice) and name in hull.searched:
            # Counted over every stage: the last one alone tried most options too rarely to drop any.
            best = [config[name] for config in top if config.get(name) is not None]
            used = [config[name] for config in tried if config.get(name) is not None]
            options[name] = narrow_choice(dist, used, best, CHOICE_FLOOR) if len(best) >= min_top else dist
    base = hull.replace(**options)
    narrowed = narrow_space(base, results, top_fraction=top_fraction, min_top=min_top,
                            **({} if extend_edges else {"extend": 0.0}))
    return NextSweep(narrowed.space, hull, narrowed.edges, stage, len(top), len(results), top[0], tuple(top))
