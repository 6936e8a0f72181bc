"""Run settings: one dataclass, filled from task defaults, then a TOML file, then the CLI/API.

Every field is checked here, and a bad value is refused with a message naming the field.
"""

from __future__ import annotations

import math
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from orchestrator.decide.fusing import FUSE_MODES
from orchestrator.decide.pruning import PRUNERS
from orchestrator.errors import ConfigError, did_you_mean
from orchestrator.search.sampler import SAMPLERS
from orchestrator.search.stage_policy import STAGE_POLICIES

PRECISIONS = ("fp32", "bf16", "fp16")
EXECUTORS = ("auto", "ray", "processes")


@dataclass
class RunSettings:
    trials: int = 24
    epochs: int = 10
    plan: str | None = None  # "64x1,24x5,8x20"; None: derived from trials and epochs
    stages: int | None = None  # number of stages for the derived plan; 1 = plain random search
    slots: int | None = None  # parallel trials; None: as many as the cluster's CPUs allow
    seed: int = 0
    sampler: str = "tpe"  # random first stage, then a density ratio on finished trials (orchestrator/search/tpe.py)
    pruner: str = "asha"
    # The pruner's own options by name (TOML: pruner_options = {min_trials = 3}); a configured pruner passed to
    # run_sweep (MedianStoppingPruner(min_trials=3)) records its options here, so a resume prunes as the sweep began
    pruner_options: dict[str, Any] = field(default_factory=dict)
    # How a stage leads to the next (orchestrator/search/stage_policy.py): narrow the ranges, retrain the best
    stage_policy: str = "narrow_and_promote"
    grace_epochs: int = 1
    reduction_factor: int = 3
    max_loss_ratio: float = 4.0
    # End a trial once its objective has not improved for this many epochs (0: off); its best checkpoint is kept
    early_stopping: int = 0
    top_fraction: float = 0.25
    seed_copies: int = 0  # after the last stage, train the best config this many more times with new seeds
    promote_fraction: float = 0.5  # share of each later stage that retrains the best configs of the one before
    # A best value on the edge of its range moves the next stage's range past that edge (never past `limits=`).
    # False: every stage stays inside the declared ranges.
    extend_edges: bool = True
    storage: str = "caviar-runs"
    shared_storage: bool = False  # a local storage path that every node mounts (NFS); needed on multi-node clusters
    name: str | None = None
    overwrite: bool = False
    address: str | None = None  # None: start Ray on this machine
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    device: str = "auto"
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast; fp16 adds a grad scaler)
    keep_best: int = 1
    checkpoint_seconds: float = 30.0
    max_retries: int = 2
    fail_fast: int = 5
    ensemble: bool = True
    prediction_dtype: str = "float16"  # val/test probabilities stored per kept checkpoint: float16, float32 or none
    dashboard: bool = False
    dashboard_host: str = "127.0.0.1"
    # Train same-shape trials as fused arrays: off (default), auto (when the model allows), on. Fusing shares
    # shape-defining values in blocks of trials, so a stage explores fewer shapes: throughput for diversity.
    fuse: str = "off"
    array_size: int | str = "auto"  # K, trials per fused array; auto: the smallest K past which throughput stops rising
    wait_for_cluster_seconds: float = 600.0  # on a cluster, how long to wait for a node (autoscaler) to fit a trial
    # A clean sweep's actors stay this long for the next sweep of the same task in this process (cluster/warm_pool.py)
    keep_workers: float = 120.0
    # Where trials run: "ray" (actors; a private Ray without --address), "processes" (children of this process,
    # forked after its imports and data load: no Ray, one machine, CPU only, fused arrays too; worker/pool/), or "auto":
    # processes unless a setting needs Ray or this process already runs one (resolved_executor)
    executor: str = "auto"

    def validate(self) -> RunSettings:
        positive_ints = ("trials", "epochs", "grace_epochs", "keep_best")
        for name in positive_ints:
            _check(name, _int(getattr(self, name)) and getattr(self, name) >= 1, "a positive integer")
        for name in ("slots", "stages"):
            value = getattr(self, name)
            _check(name, value is None or (_int(value) and value >= 1), "a positive integer")
        _check(
            "reduction_factor", _int(self.reduction_factor) and self.reduction_factor >= 2, "an integer >= 2"
        )
        # The sweep row stores the seed as int64: a larger one (a random 64-bit seed, half the time) failed there with
        # pyarrow's "OverflowError: Python int too large to convert to C long", the sweep's folder half written.
        _check("seed", _int(self.seed) and 0 <= self.seed < 2**63, "a non-negative integer below 2**63")
        _check("pruner", self.pruner in PRUNERS or _is_class_path(self.pruner), f"one of {', '.join(sorted(PRUNERS))}")
        _check("pruner_options", isinstance(self.pruner_options, dict)
               and all(isinstance(k, str) and _plain(v) for k, v in self.pruner_options.items()),
               "a mapping of option name to a number, true/false or text (pruner_options = {min_trials = 3})")
        _check("sampler", self.sampler in SAMPLERS or _is_class_path(self.sampler), f"one of {', '.join(SAMPLERS)}")
        _check("stage_policy", self.stage_policy in STAGE_POLICIES or _is_class_path(self.stage_policy),
               f"one of {', '.join(STAGE_POLICIES)}")
        _check("cpus_per_trial", _num(self.cpus_per_trial) and self.cpus_per_trial > 0, "a number > 0")
        _check("gpus_per_trial", _num(self.gpus_per_trial) and self.gpus_per_trial >= 0, "a number >= 0")
        _check("max_loss_ratio", _num(self.max_loss_ratio) and self.max_loss_ratio > 1, "a number > 1")
        _check("early_stopping", isinstance(self.early_stopping, int) and not isinstance(self.early_stopping, bool)
               and self.early_stopping >= 0, "an integer >= 0 (epochs without improvement; 0: off)")
        _check("top_fraction", _num(self.top_fraction) and 0 < self.top_fraction <= 1, "a number in (0, 1]")
        _check(
            "seed_copies",
            isinstance(self.seed_copies, int)
            and not isinstance(self.seed_copies, bool)
            and 0 <= self.seed_copies <= 1000,
            "an integer from 0 to 1000",
        )
        _check(
            "promote_fraction", _num(self.promote_fraction) and 0 <= self.promote_fraction <= 1, "a number in [0, 1]"
        )
        _check("checkpoint_seconds", _num(self.checkpoint_seconds) and self.checkpoint_seconds >= 0, "a number >= 0")
        _check("max_retries", _int(self.max_retries) and self.max_retries >= 0, "an integer >= 0")
        _check("fail_fast", _int(self.fail_fast) and self.fail_fast >= 1, "a positive integer")
        # A string is a slip (TOML's overwrite = "false", a notebook's overwrite="no") that reads as true: refused,
        # or it would replace the sweep it meant to keep.
        for name in ("extend_edges", "overwrite", "ensemble", "shared_storage", "dashboard"):
            _check(name, isinstance(getattr(self, name), bool), "true or false")
        for name in ("name", "address", "plan"):
            _check(name, getattr(self, name) is None or isinstance(getattr(self, name), str), "a string")
        _check("dashboard_host", isinstance(self.dashboard_host, str), "a string")
        _check("resources", isinstance(self.resources, dict), "a mapping of NAME to AMOUNT")
        _check(
            "device",
            isinstance(self.device, str)
            and (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps")),
            "auto, cpu or cuda[:N]",
        )
        _check("storage", isinstance(self.storage, str) and bool(self.storage), "a path or URI")
        _check("prediction_dtype", self.prediction_dtype in ("float16", "float32", "none"),
               "float16, float32 or none")
        _check("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
        _check("fuse", self.fuse in FUSE_MODES, f"one of {', '.join(FUSE_MODES)}")
        _check(
            "array_size",
            self.array_size == "auto"
            or (isinstance(self.array_size, int) and not isinstance(self.array_size, bool) and self.array_size >= 1),
            "auto or a positive integer",
        )
        _check("wait_for_cluster_seconds", _num(self.wait_for_cluster_seconds) and self.wait_for_cluster_seconds >= 0,
               "a number >= 0")
        _check("keep_workers", _num(self.keep_workers) and self.keep_workers >= 0, "a number of seconds >= 0")
        for key, value in self.resources.items():
            if key in BUILT_IN_RESOURCES:  # Ray refuses them as custom resources, with a traceback at the first actor
                raise ConfigError(f"setting 'resources.{key}': {key} is not a custom resource; "
                                  f"use {BUILT_IN_RESOURCES[key]} instead")
            _check(f"resources.{key}", _num(value) and value > 0, "a number > 0")
        _check("executor", self.executor in EXECUTORS, f"one of {', '.join(EXECUTORS)}")
        self._check_client_storage()
        if self.executor == "processes":
            self._check_processes()
        if self.plan is not None:
            from orchestrator.search.stages import parse_plan

            parse_plan(self.plan)
        return self

    def needs_ray(self) -> list[tuple[str, str]]:
        """(setting, what it does) for each setting only the ray executor honours."""
        wanted = [("address", bool(self.address), "joins a Ray cluster"),
                  ("gpus_per_trial", bool(self.gpus_per_trial), "places GPUs"),
                  ("resources", bool(self.resources), "asks for custom resources"),
                  ("device", self.device not in ("auto", "cpu"), f"trains on {self.device}"),
                  ("dashboard", self.dashboard, "starts Ray's dashboard")]
        return [(name, what) for name, wanted_here, what in wanted if wanted_here]

    def resolved_executor(self, ray_running: bool) -> str:
        """``auto``: child processes for a CPU sweep on this machine (they start in milliseconds, Ray in
        seconds); Ray when a setting needs it, or when this process already joined one (``ray.init`` in a
        notebook: the user chose where trials run)."""
        return self.executor_and_why(ray_running)[0]

    def executor_and_why(self, ray_running: bool) -> tuple[str, str]:
        """The executor :meth:`resolved_executor` picks, and why in words (the sweep's ``executor`` event)."""
        if self.executor != "auto":
            return self.executor, f"executor {self.executor!r} as set"
        conflicts = self.needs_ray()
        if conflicts:
            return "ray", f"auto: setting '{conflicts[0][0]}' {conflicts[0][1]}, which needs Ray"
        if ray_running:
            return "ray", "auto: this process had already joined a Ray"
        return "processes", "auto: one machine and no setting that needs Ray, so child processes of the master"

    def _check_client_storage(self) -> None:
        """Over Ray Client (ray://) the master runs on this machine and no trial does: a local path would hold the
        master's tables here and the workers' rows and checkpoints on the cluster's disks, apart."""
        storage = str(self.storage)
        local = "://" not in storage or storage.startswith("file://")
        if str(self.address or "").startswith("ray://") and local and not self.shared_storage:
            raise ConfigError(f"setting 'storage': {storage!r} is a local path but address {self.address!r} drives "
                              "the cluster over Ray Client from this machine, where no trial runs (its workers would "
                              "write to their own disks); use a URI every node reaches (s3://, gs://, hdfs://) or, if "
                              "the path is a mount this machine shares with every node, pass --shared-storage")

    def _check_processes(self) -> None:
        """The process pool runs CPU trials on this machine only: a setting that needs Ray is refused, never ignored."""
        conflicts = self.needs_ray()
        if conflicts:
            name, what = conflicts[0]
            raise ConfigError(f"setting '{name}': {what}, which only the ray executor does; use --executor ray "
                              f"(executor = \"ray\" in TOML), or drop {name}")

    def worker_options(self, device: str) -> dict[str, Any]:
        """What each worker is told about the sweep, whichever executor runs it."""
        return {"device": device, "precision": self.precision, "keep_best": self.keep_best,
                "checkpoint_seconds": self.checkpoint_seconds, "max_loss_ratio": self.max_loss_ratio,
                "early_stopping": self.early_stopping,
                "threads": max(1, int(self.cpus_per_trial)), "prediction_dtype": self.prediction_dtype}

    def merged(self, overrides: Mapping[str, Any]) -> RunSettings:
        """A copy with ``overrides`` applied; unknown fields are refused by name. ``None`` keeps the value."""
        known = {f.name for f in fields(self)}
        for key in overrides:
            if key in TASK_FIELDS:  # settings = {"objective": "val_ece"}: say where it belongs
                given = f"{key} = ..." if overrides[key] is None else f"{key} = {overrides[key]!r}"
                raise ConfigError(f"setting '{key}': a field of the task, not a run setting: write {given} at the top "
                                  "level of the task file, beside load_data")
            if key not in known:
                raise ConfigError(f"setting '{key}': unknown{did_you_mean(key, known)} "
                                  f"(known: {', '.join(sorted(known))})")
        data = asdict(self)
        data.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(data["storage"], os.PathLike):  # storage=tmp_path: the sweep row and every message hold text
            data["storage"] = os.fspath(data["storage"])
        return RunSettings(**data)


# What a task file declares at its top level (orchestrator/spec/task.py), sometimes written among its settings
TASK_FIELDS = ("objective", "mode", "kind", "metric", "num_classes", "normalize", "standardize_targets")


def _int(value: Any) -> bool:
    """An int that is not a bool: TOML's `seed = true` or `stages = true` is a slip, not 1."""
    return isinstance(value, int) and not isinstance(value, bool)


BUILT_IN_RESOURCES = {"CPU": "cpus_per_trial (--cpus-per-trial)", "GPU": "gpus_per_trial (--gpus-per-trial)"}


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value: Any) -> bool:
    """A value the sweep row's JSON holds as it is."""
    return value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value))


def _check(name: str, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"setting '{name}': expected {expected}")


def read_toml(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(run settings, space overrides)`` from a TOML file with ``[run]`` and ``[space]`` tables."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config {path!r}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path!r}: not valid TOML ({exc})") from None
    unknown = set(data) - {"run", "space"}
    if unknown:
        raise ConfigError(f"config {path!r}: unknown table(s) {', '.join(sorted(unknown))} (use [run] and [space])")
    run = dict(data.get("run", {}))
    try:  # a typo is the file's: named with it, whichever command read it
        RunSettings().merged({key: None for key in run})
    except ConfigError as exc:
        raise ConfigError(f"config {path!r}: [run] {exc}") from None
    return run, dict(data.get("space", {}))


def _is_class_path(value: Any) -> bool:
    """``package.module.Class``: how the sweep row names a pruner, sampler or stage policy passed as an object; a class
    made inside a function has ``<locals>`` in its path (``module.make.<locals>.Class``)."""
    return isinstance(value, str) and "." in value and all(part.isidentifier() or part == "<locals>"
                                                           for part in value.split("."))


def ray_joined() -> bool:
    """This process already runs or joined a Ray (``ray.init`` before the sweep); never imports Ray to find out."""
    # Half-imported while another thread's sweep imports it: that Ray is not running yet.
    is_initialized = getattr(sys.modules.get("ray"), "is_initialized", None)
    return bool(is_initialized is not None and is_initialized())
