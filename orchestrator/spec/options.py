"""The keyword arguments of ``run_sweep`` and ``resume_sweep``, typed and documented one by one.

``run_sweep(task, trials=64, pruner="median")`` checks as a TypedDict (PEP 692): an editor
completes the names and a type checker flags a wrong one. Each key is a field of
:class:`orchestrator.spec.settings.RunSettings` (a test keeps the two in step); ``pruner``, ``sampler``
and ``stage_policy`` also take objects (:mod:`orchestrator.decide.pruning`, :mod:`orchestrator.search.sampler`,
:mod:`orchestrator.search.stage_policy`).
"""

from __future__ import annotations

from typing import Any, TypedDict

from orchestrator.decide.pruning import Pruner
from orchestrator.search.sampler import Sampler
from orchestrator.search.stage_policy import StagePolicy


class ResumeOptions(TypedDict, total=False):
    """How a resumed sweep runs; what it searches is fixed by its tables."""

    slots: int  # trials trained at once (default: as many as the cluster's CPUs allow / as started)
    address: str  # Ray cluster: "auto", "HOST:PORT" or "ray://HOST:10001"; unset: run on this machine (see executor)
    cpus_per_trial: float  # CPUs each trial holds (1.0)
    gpus_per_trial: float  # GPUs each trial holds; 0.25 packs four trials on a GPU (0.0)
    resources: dict[str, float]  # custom Ray resources each trial holds, e.g. {"accelerator_type_a100": 1}
    device: str  # "auto", "cpu" or "cuda"
    dashboard: bool  # start Ray's dashboard (False)
    dashboard_host: str  # the dashboard's bind address ("127.0.0.1": this machine only)
    ensemble: bool  # build ensembles from stored predictions at the end (True)
    shared_storage: bool  # a local storage path that every node mounts (NFS); needed on multi-node clusters
    checkpoint_seconds: float  # at most this long between a trial's checkpoints (30.0)
    keep_workers: float  # seconds a clean sweep's actors stay warm for this process's next sweep of the task (120)
    # where trials run: "auto" (default: processes unless a setting needs Ray), "ray" (actors; a private Ray without
    # an address) or "processes" (children of this process: no Ray, one machine, CPU)
    executor: str


class RunOptions(ResumeOptions, total=False):
    """Everything a sweep can be told: each comment says what it does, then its default (README, "A TOML file")."""

    trials: int  # total trials over all stages (24)
    epochs: int  # epoch budget of the last, longest stage (10)
    plan: str  # explicit stages, TRIALSxEPOCHS each: "64x1,24x5,8x20" (default: derived from trials and epochs)
    stages: int  # stages in the derived plan; 1 = plain random search
    seed: int  # fixes the first stage and each trial's torch seed; later stages follow pruning (README "Reruns") (0)
    sampler: str | Sampler  # "random", "sobol", "lhs", "tpe" (default), or a Sampler object
    pruner: str | Pruner | type[Pruner]  # "asha" (default), "median", "none", or a Pruner class or object
    pruner_options: dict[str, Any]  # the pruner's own options: {"min_trials": 3} for "median" ({}: its defaults)
    # how a stage leads to the next: "narrow_and_promote" (default), "fresh", or a StagePolicy class or object
    stage_policy: str | StagePolicy | type[StagePolicy]
    grace_epochs: int  # epochs before a pruner may stop a trial (1)
    reduction_factor: int  # ASHA's eta: keep the top 1/eta at each rung (3)
    max_loss_ratio: float  # a train loss above this multiple of its first value has diverged (4.0)
    early_stopping: int  # end a trial once its objective has not improved for this many epochs (0: off)
    top_fraction: float  # share of a stage's trials the next stage's ranges are narrowed around (0.25)
    seed_copies: int  # after the last stage, train the best config this many more times with new seeds (0)
    promote_fraction: float  # share of each later stage that retrains the best configs of the one before (0.5)
    extend_edges: bool  # a best value on a range's edge moves the next stage past it (True; never past limits=)
    storage: str  # where sweeps live: a path or a pyarrow.fs URI ("caviar-runs")
    name: str  # the sweep's name (default: TASK-DATE-TIME)
    overwrite: bool  # replace a sweep of the same name (False)
    precision: str  # "fp32", "bf16" or "fp16" (autocast; fp16 adds a grad scaler)
    keep_best: int  # checkpoints kept per trial besides the last (1)
    max_retries: int  # a trial whose worker dies is retried this many times (2)
    fail_fast: int  # stop when this many trials fail before any succeeds (5)
    prediction_dtype: str  # val/test outputs stored per kept checkpoint: "float16", "float32" or "none"
    fuse: str  # train same-shape trials as fused arrays: "off" (default), "auto", "on"
    array_size: int | str  # trials per fused array, or "auto"
    wait_for_cluster_seconds: float  # on a cluster, how long to wait for a node (autoscaler) to fit a trial (600)
