"""``load_ensemble``: a finished sweep's ensemble as one torch module, from Parquet and safetensors alone.

Each member is rebuilt with the task's ``build_model(config)`` (the config from the trials
table) and gets its weights from the safetensors file the checkpoint index points to,
after the file's sha256 matches the index. No Ray, no pickle. The module takes raw
inputs: it applies the train-split standardisation the workers used (stored once per sweep
in ``dataset/dataset.parquet``), so ``model(x_raw)`` sees what the members saw in training.
"""

from __future__ import annotations

import logging
import math
import os
import re
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from orchestrator.ensemble.ensemble_run import (
    Dataset,
    EnsembleRecord,
    best_checkpoint,
    pick,
    predictions_off,
    read_dataset,
    read_ensembles,
)
from orchestrator.ensemble.ensembles import CandidateKey
from orchestrator.errors import ConfigError, StorageError, TaskError
from orchestrator.spec.task import Task
from orchestrator.spec.task_source import edited_since, sweep_task
from orchestrator.store import schema
from orchestrator.store.storage import Storage, sha256
from orchestrator.store.sweeps import not_a_sweep
from worker.data import task_globals
from worker.data.kinds import TargetKind, class_dim, class_scores
from worker.data.seeds import seeded_randomness
from worker.data.streams import eval_rows
from worker.load.objective import stored_class_dim
from worker.train.recorder import load_safetensors
from worker.train.trainer import pick_device

log = logging.getLogger("caviar")
_UNSET = object()  # a global the task's import did not define


def read_verified(storage: Storage, rel: str, expected_sha256: str | None) -> bytes:
    """The file's bytes, refused (naming the file) when they are not what the index recorded."""
    data = storage.read_bytes(rel)
    if expected_sha256 and sha256(data) != expected_sha256:
        raise StorageError(f"{storage.path(rel)}: sha256 mismatch (the index records {expected_sha256[:16]}..., "
                           f"the file has {sha256(data)[:16]}...); it changed after it was written")
    return data


def load_state(storage: Storage, rel: str, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    return load_safetensors(read_verified(storage, rel, expected_sha256), storage.path(rel))



def _keyed(rows: list[dict[str, Any]]) -> dict[CandidateKey, dict[str, Any]]:
    """Index rows by checkpoint; of a checkpoint in rows of several attempts, the latest attempt's."""
    return {CandidateKey(row["trial_id"], row["epoch"], row["weights"]): row
            for row in sorted(rows, key=lambda r: r["attempt"])}


class SweepModels:
    """A sweep's trial configs and checkpoint index: builds members and loads their weights."""

    def __init__(self, storage: Storage, task: Task | str | None = None, trust_task_code: bool = False):
        self.storage = storage
        if not storage.exists(schema.SWEEP_PATH):
            raise not_a_sweep(storage, storage.uri)
        self.task = sweep_task(storage, task, trust_task_code=trust_task_code)
        self._given_task = task  # the caller's own file, if any: named when weights do not fit what it builds
        # A file read now: weights that still fit an edited build_model (an activation, a dropout) load without a
        # word. (A loaded Task holds the code it imported, whatever its file holds since.)
        edited = edited_since(storage, task) if isinstance(task, str) else None
        if edited:
            log.warning("%s; its build_model builds the sweep's models, so an edit that changed the model changes "
                        "their outputs (trust_task_code=True, --trust-task-code, builds them with the stored copy)",
                        edited)
        self._set_task_globals(schema.read_dataset_row(storage))
        trials = storage.read_table(schema.TRIALS_PATH).to_pylist()
        options = schema.stored_choice_options(storage.read_table(schema.SWEEP_PATH).to_pylist()[0].get("space"))
        self.configs: dict[int, dict[str, Any]] = {t["trial_id"]: schema.typed_config(t["config"] or {}, options)
                                                   for t in trials}
        self.seeds: dict[int, int | None] = {t["trial_id"]: t.get("seed") for t in trials}
        self._index: dict[CandidateKey, dict[str, Any]] | None = None  # every trial's, read when first asked for
        self._trial_index: dict[int, dict[CandidateKey, dict[str, Any]]] = {}  # one trial's index file each

    @property
    def checkpoints(self) -> dict[CandidateKey, dict[str, Any]]:
        """The whole checkpoint index (the best checkpoint and a soup's candidates need it), read once."""
        if self._index is None:
            index = schema.read_dir(self.storage, "checkpoints", schema.CHECKPOINTS)
            assert index is not None
            self._index = _keyed(index.to_pylist())
        return self._index

    def _row(self, key: CandidateKey) -> dict[str, Any] | None:
        """``key``'s index row from its own trial's index file: an ensemble's members need a few of a sweep's
        thousands (the whole folder took 0.7 s of load_ensemble's 0.86 s at 1,240 trials)."""
        if self._index is not None:
            return self._index.get(key)
        if key.trial_id not in self._trial_index:
            rel = schema.checkpoint_index_path(key.trial_id)
            rows = self.storage.read_table(rel).to_pylist() if self.storage.exists(rel) else []
            self._trial_index[key.trial_id] = _keyed(rows)
        return self._trial_index[key.trial_id].get(key)

    def _set_task_globals(self, dataset_row: dict[str, Any]) -> None:
        """Set what the sweep's load_data left in the task (``WIDTH = x.shape[1]``): this process never ran it."""
        stored = task_globals.decode(dataset_row.get("task_globals"))
        self._before_stored = {name: getattr(self.task.namespace, name, _UNSET) for name in stored}
        task_globals.apply(self.task.namespace, stored)
        # Globals JSON could not hold (a tokenizer), or a sweep from before they were stored: load_data sets them,
        # run only if a member fails to build or load without it (a serving machine may lack the data).
        self._unstored = (dataset_row.get("task_globals_left_out") or []) if "task_globals" in dataset_row \
            else ["(not recorded before this version)"]
        self._ran_load_data = False

    def build(self, trial_id: int) -> nn.Module:
        if trial_id not in self.configs:
            raise StorageError(f"{self.storage.path(schema.TRIALS_PATH)}: no trial {trial_id}")
        seed = self.seeds.get(trial_id)
        try:
            if seed is None:
                return self.task.get("build_model")(dict(self.configs[trial_id]))
            # Seeded as the trial was: what build_model draws and no checkpoint holds (a non-persistent buffer of
            # random features, a plain tensor attribute) is then the trial's own; the caller's generators are kept.
            with seeded_randomness(int(seed), torch.device("cpu")):
                return self.task.get("build_model")(dict(self.configs[trial_id]))
        except Exception as exc:
            raise TaskError(f"build_model raised {type(exc).__name__} for trial {trial_id}: {exc}") from exc

    def with_weights(self, trial_id: int, state: dict[str, torch.Tensor]) -> nn.Module:
        """Trial ``trial_id``'s model holding ``state``; once, after running load_data if it may set what
        build_model reads."""
        try:
            return self._built_with(trial_id, state)
        except (TaskError, RuntimeError) as exc:
            if not self._unstored or self._ran_load_data:
                raise
            log.info("load_ensemble: %s; running the task's load_data, which sets globals the sweep could not "
                     "store (%s), and building again", exc, ", ".join(self._unstored))
            try:
                self.run_load_data()
            except Exception as data_exc:
                raise TaskError(f"{exc}; build_model may read globals the task's load_data sets "
                                f"({', '.join(self._unstored)}), and load_data raised {type(data_exc).__name__}: "
                                f"{data_exc}") from exc
            return self._built_with(trial_id, state)

    def run_load_data(self, load_data: Callable[[], Any] | None = None) -> Any:
        """The task's ``load_data()`` (or ``load_data``), from the globals as the task's import left them: one that
        extends a list in place must not see the stored copy."""
        for name, value in self._before_stored.items():
            if value is _UNSET:
                delattr(self.task.namespace, name)
            else:
                setattr(self.task.namespace, name, value)
        self._ran_load_data = True
        return (load_data or self.task.get("load_data"))()

    def _built_with(self, trial_id: int, state: dict[str, torch.Tensor]) -> nn.Module:
        model = self.build(trial_id)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            detail = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc)]
            message = (f"trial {trial_id}'s weights do not fit the model build_model returns: "
                       f"{detail[0]}{' (and more)' if len(detail) > 1 else ''}")
            edited = edited_since(self.storage, self._given_task)
            if edited:  # the likely cause, and the way round it
                message += (f"; {edited}: load with trust_task_code=True (--trust-task-code) to build the models with "
                            "the stored copy, or pass the file as the sweep ran it")
            raise TaskError(message) from exc
        return model

    def state(self, key: CandidateKey) -> dict[str, torch.Tensor]:
        row = self._row(key)
        if row is None:
            raise StorageError(f"{self.storage.path('checkpoints')}: no checkpoint for trial {key.trial_id}, "
                               f"epoch {key.epoch}, {key.weights} weights")
        return load_state(self.storage, row["path"], row["sha256"])

    def model(self, key: CandidateKey) -> nn.Module:
        return self.with_weights(key.trial_id, self.state(key)).eval()

    def best_checkpoint(self) -> CandidateKey:
        """The kept checkpoint with the highest score (the objective, higher is better), raw or EMA weights."""
        row = best_checkpoint(list(self.checkpoints.values()))
        if row is None:
            raise StorageError(f"{self.storage.path('checkpoints')}: no checkpoint with a finite score")
        return CandidateKey(row["trial_id"], row["epoch"], row["weights"])


class EnsembleModel(nn.Module):
    """Weighted average of its members' class probabilities, on raw (unstandardised) inputs.

    ``forward`` returns probabilities (rows sum to 1), not logits; ``predict`` the classes. For a
    multi-label sweep (``multilabel``) it returns each label's averaged probability, shape (n, L), and
    ``predict`` the 0/1 labels (probability above one half).
    For a class per position (``positions``: tagging, segmentation) it returns each position's averaged class
    probabilities in the members' layout, (n, C, *S) or (n, *S, C) (two classes for a one-logit head; members of
    both layouts in one sweep are averaged in the one its dataset row stored), and
    ``predict`` the class of each position, (n, *S).
    For a regression sweep it averages the members' outputs and returns them in the targets'
    original units (undoing ``standardize_targets``), shaped ``(n, *target_shape)``.
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float], mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None, record: EnsembleRecord | None = None,
                 target_shape: tuple[int, ...] | None = None, target_mean: torch.Tensor | None = None,
                 target_std: torch.Tensor | None = None, input_dtype: torch.dtype | None = None,
                 input_shape: tuple[int, ...] | None = None, outputs_as_given: bool = False, multilabel: bool = False,
                 positions: tuple[int, ...] | None = None, class_dim: int | None = None):
        super().__init__()
        self.multilabel = multilabel  # one logit per label: sigmoid per label, averaged
        self.positions = positions  # a class per position: one example's target shape S
        # Where the members give their class scores, 1 or -1, as in training: token ids of another length have
        # other positions than S. None: as the shapes say against S.
        self.class_dim = class_dim
        self.outputs_as_given = outputs_as_given  # a custom kind's outputs: the weighted sum, no softmax, no units
        self.input_dtype = input_dtype  # what the members trained on; None: any (a module built by hand)
        self.input_shape = input_shape  # one example's shape in training; None: any
        # Regression when target_shape is set: outputs averaged, then mapped to the targets' original units.
        self.target_shape = target_shape
        self.register_buffer("target_mean", target_mean)
        self.register_buffer("target_std", target_std)
        if len(members) != len(weights) or not members:
            raise ValueError(f"need one weight per member, got {len(weights)} for {len(members)}")
        self.members = nn.ModuleList(members)
        w = torch.as_tensor(list(weights), dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())
        # A regression's weights as Python floats (float64), as the ensembles table averaged the stored outputs:
        # float32 weights (3/7 is off by 1e-8) that sum to 1 + 1e-7 moved a float64 model's outputs near 1e7 by 0.4.
        total = math.fsum(float(v) for v in weights)
        self.value_weights = tuple(float(v) / total for v in weights)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.record = record  # the ensembles-table row it came from (method, metrics, members)
        self.feature_names: tuple[str, ...] | None = None  # the training DataFrame's columns (load_ensemble sets them)
        self.eval()
        # Each member's own class dimension: an architecture choice may give (n, C, T) in one trial, (n, T, C) in
        # another; one dimension for all softmaxed the others over their positions, or could not add them.
        self.member_dims = self._member_class_dims() if positions is not None else []

    def _as_batch(self, x: Any) -> torch.Tensor:
        """``x`` as a tensor of the dtype it holds: a DataFrame (pandas, Polars) gives its values, which torch cannot
        take as they are (it indexed columns by row number: KeyError); a reversed view is copied."""
        if isinstance(x, torch.Tensor):
            return x
        if isinstance(x, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
            raise ConfigError(self._not_a_batch(x))
        if hasattr(x, "to_numpy") and not isinstance(x, np.ndarray):
            x = self._in_training_order(x).to_numpy()
        if isinstance(x, np.ndarray) and x.dtype == object:
            wanted = str(self.input_dtype).removeprefix("torch.") if self.input_dtype is not None else "one numeric"
            raise ConfigError(f"inputs hold Python objects (a DataFrame whose columns differ in dtype?); pass {wanted} "
                              "values (caviar never casts inputs)")
        if isinstance(x, np.ndarray) and any(stride < 0 for stride in x.strides):
            x = x.copy()  # np.flip(x, -1), a mirrored test-time view: torch takes no negative strides; values kept
        with warnings.catch_warnings():  # a read-only array (a DataFrame's values, a memmap): never written to here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            try:
                return torch.as_tensor(x)
            except (TypeError, ValueError, RuntimeError) as exc:  # a list of image tensors: "only one element ..."
                raise ConfigError(self._not_a_batch(x, exc)) from None

    def _not_a_batch(self, x: Any, exc: Exception | None = None) -> str:
        """What to pass instead of a Dataset, a DataLoader or a list of tensors: one batch, or a loop of them."""
        shape = f"(N, {', '.join(map(str, self.input_shape))})" if self.input_shape else "(N, ...)"
        why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        return (f"inputs are a {type(x).__name__}{why}; a loaded ensemble takes one batch, an array or tensor of "
                f"shape {shape}: stack a Dataset's inputs (torch.stack([ds[i][0] for i in range(len(ds))])), or "
                "predict batch by batch (torch.cat([model.predict(x) for x, _ in loader]))")

    def _in_training_order(self, frame: Any) -> Any:
        """A DataFrame's columns in the order the sweep trained on (by name), when it trained on a DataFrame: the same
        columns in another order would otherwise reach other inputs of the model without a word."""
        given = [str(c) for c in getattr(frame, "columns", ())]
        if self.feature_names is None:  # trained on arrays: nothing to match names with (scikit-learn warns alike)
            warnings.warn("the sweep trained on arrays, so the DataFrame's columns are taken in the order given, by "
                          "position, not by name: give them in the training order (or give load_data a DataFrame, "
                          "whose column names the sweep then keeps)", UserWarning, stacklevel=4)
            return frame
        if given == list(self.feature_names):
            return frame
        missing = [c for c in self.feature_names if c not in given]
        unknown = [c for c in given if c not in self.feature_names]
        if missing or unknown:
            lacks = f"lacks {', '.join(map(repr, missing[:3]))}" if missing else ""
            has = f"has {', '.join(map(repr, unknown[:3]))}, which the sweep did not train on" if unknown else ""
            said = "; ".join(part for part in (lacks, has) if part)
            raise ConfigError(f"inputs: the DataFrame {said}; give the training columns "
                              f"({', '.join(self.feature_names[:5])}{', ...' if len(self.feature_names) > 5 else ''})")
        return frame[list(self.feature_names)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._as_batch(x).to(self.weights.device)
        if self.input_dtype is not None and x.dtype != self.input_dtype:  # never cast: refuse, saying what to pass
            given, wanted = (str(d).removeprefix("torch.") for d in (x.dtype, self.input_dtype))
            how = " (numpy has none: torch.tensor(x, dtype=torch.bfloat16))" if wanted == "bfloat16" else ""
            raise ConfigError(f"inputs are {given} but the sweep's models trained on {wanted} inputs; pass {wanted}"
                              f"{how} (caviar never casts inputs)")
        self._check_shape(x)
        try:
            return self._outputs(x)
        except (IndexError, RuntimeError) as exc:  # torch's words name neither the ids nor the table
            if (x.is_floating_point() or x.dtype == torch.bool or x.numel() == 0
                    or not re.search(r"index out of range|not in the valid range", str(exc))):
                raise
            sizes = sorted({m.num_embeddings for member in self.members for m in member.modules()
                            if isinstance(m, (nn.Embedding, nn.EmbeddingBag))})
            if not sizes:
                raise
            raise ConfigError(f"inputs hold ids from {int(x.min())} to {int(x.max())}, and the models raised "
                              f"{type(exc).__name__}: {' '.join(str(exc).split())}; their embeddings take ids 0 to "
                              f"num_embeddings - 1 (num_embeddings {', '.join(map(str, sizes))}): give ids in that "
                              "range (words the training data lacked as one unknown-token id)") from exc

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The ensemble's answer for a checked batch ``x`` (in the sweep's dtype and shape)."""
        if self.mean is not None and self.std is not None and x.is_floating_point():
            # the workers' transform: train-split statistics (integer inputs have none)
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if self.target_shape is not None:
            return self._regression(x)
        if self.outputs_as_given:
            return sum(weight * member(x) for weight, member in zip(self.weights, self.members))
        if self.multilabel:
            return sum(weight * torch.sigmoid(member(x).float()) for weight, member in zip(self.weights, self.members))
        if self.positions is not None:
            return self._per_position(x)
        probs = None
        for weight, member in zip(self.weights, self.members):
            p = weight * torch.softmax(class_scores(member(x).float()), dim=1)
            probs = p if probs is None else probs + p
        assert probs is not None
        return probs

    def _per_position(self, x: torch.Tensor) -> torch.Tensor:
        """Each position's weighted mean of class probabilities, along the class dimension each member gives, in the
        sweep's layout (its stored class dimension)."""
        probs = None
        for i, (weight, member) in enumerate(zip(self.weights, self.members)):
            out = member(x).float()
            dim = self.member_dims[i] if i < len(self.member_dims) and self.member_dims[i] is not None \
                else self._class_dim(out)
            if out.shape[dim] == 1:  # one logit per position: the scores (0, z), as in training
                out = torch.cat([torch.zeros_like(out), out], dim=dim)
            p = weight * torch.softmax(out, dim=dim)
            layout = self.class_dim if self.class_dim is not None else dim
            p = p if dim % p.dim() == layout % p.dim() else p.movedim(dim, layout)
            probs = p if probs is None else probs + p
        assert probs is not None
        return probs

    @torch.no_grad()
    def _member_class_dims(self) -> list[int | None]:
        """Each member's class dimension, from one example of the training shape (None: the shapes decide per call)."""
        if self.input_shape is None or self.input_dtype is None:
            return []
        probe = torch.zeros((1, *self.input_shape), dtype=self.input_dtype)  # id 0, or a standardised mean
        dims: list[int | None] = []
        for member in self.members:
            try:
                dims.append(class_dim(tuple(member(probe).shape), TargetKind("classification",
                                                                            positions=self.positions)))
            except Exception:  # a member this probe cannot run: its outputs' shapes decide, as before
                dims.append(None)
        return dims

    def _class_dim(self, scores: torch.Tensor) -> int:
        if self.class_dim is not None:
            return self.class_dim
        return class_dim(tuple(scores.shape), TargetKind("classification", positions=self.positions))

    def _check_shape(self, x: torch.Tensor) -> None:
        """A batch of examples shaped as in training: one unbatched example, or features the standardisation
        would broadcast against, would otherwise give a wrong answer or torch's error about tensor sizes."""
        if self.input_shape is None:
            return
        wanted = f"(N, {', '.join(map(str, self.input_shape))})" if self.input_shape else "(N,)"
        if x.ndim != len(self.input_shape) + 1:
            one = ": for one example pass x[None]" if x.ndim == len(self.input_shape) else ""
            raise ConfigError(f"inputs of shape {tuple(x.shape)}; the sweep's models take a batch of shape "
                              f"{wanted}{one}")
        if self.mean is not None and x.is_floating_point() and tuple(x.shape[1:]) != tuple(self.input_shape):
            # The stored statistics fix each feature's place; a sequence of integer ids may change length.
            raise ConfigError(f"inputs of shape {tuple(x.shape)}; the sweep's models take a batch of shape {wanted} "
                              "(the training split's standardisation is per feature)")

    def _regression(self, x: torch.Tensor) -> torch.Tensor:
        """The weighted mean of the members' outputs, shaped as one target per row, in original units."""
        assert self.target_shape is not None
        total = None
        for weight, member in zip(self.value_weights, self.members):
            out = weight * member(x).double().reshape(len(x), *self.target_shape)
            total = out if total is None else total + out
        assert total is not None
        if self.target_mean is not None and self.target_std is not None:
            total = total * self.target_std + self.target_mean  # the workers trained on standardised targets
        return total

    def predict(self, x: torch.Tensor | np.ndarray, batch_size: int | None = None) -> torch.Tensor:
        """Most probable class per row (regression: the predicted values), in batches, without gradients, with the
        members in eval mode whatever mode the module is in (``.train()`` on a model holding it): in training mode
        dropout would draw and batch norm would both use and overwrite its running statistics with the batch's."""
        if self.target_shape is not None or self.outputs_as_given:
            return self._in_batches(x, batch_size, lambda out: out)
        if self.multilabel:
            return self._in_batches(x, batch_size, lambda probs: (probs > 0.5).long())
        if self.positions is not None:  # along the class dimension the members give
            return self._in_batches(x, batch_size, lambda probs: probs.argmax(dim=self._class_dim(probs)))
        return self._in_batches(x, batch_size, lambda probs: probs.argmax(dim=1))

    def predict_proba(self, x: torch.Tensor | np.ndarray, batch_size: int | None = None) -> torch.Tensor:
        """What ``forward`` returns (class probabilities; each label's for multi-label), batched and in eval mode as
        ``predict`` runs: scikit-learn's name, which users of its classifiers call first."""
        if self.target_shape is not None or self.outputs_as_given:
            raise ConfigError("predict_proba: this sweep's model predicts values, not class probabilities: call "
                              "predict(x)")
        return self._in_batches(x, batch_size, lambda probs: probs)

    @torch.no_grad()
    def _in_batches(self, x: Any, batch_size: int | None, then: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        modes = [(module, module.training) for module in self.modules()]
        if any(training for _, training in modes):
            self.eval()
            try:
                return self._in_batches(x, batch_size, then)
            finally:
                for module, training in modes:  # as the caller left each one
                    module.training = training
        x = self._as_batch(x)
        batch_size = batch_size or eval_rows(tuple(x.shape[1:]))  # members run one after another
        # An empty batch (or a scalar, which forward refuses) is one call: torch.cat takes no empty list.
        chunks = [x[i : i + batch_size] for i in range(0, len(x), batch_size)] if x.ndim and len(x) else [x]
        return torch.cat([then(self(chunk)) for chunk in chunks])


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise StorageError(f"{schema.DATASET_PATH}: input_dtype {name!r} is not a torch dtype")
    return dtype


def _stat(values: np.ndarray | None) -> torch.Tensor | None:
    return None if values is None else torch.from_numpy(np.ascontiguousarray(values)).unsqueeze(0)


def load_ensemble(sweep: str | os.PathLike[str] | Storage, name: str | int = "best", *,
                  device: str | torch.device = "cpu",
                  task: Task | str | os.PathLike[str] | types.ModuleType | None = None,
                  trust_task_code: bool = False) -> EnsembleModel:
    """The ensemble ``name`` of a sweep (``best``: the one chosen on validation; or a row's ``ensemble_id``) as an
    eval-mode module.

    ``sweep`` is the sweep directory, a local path or a ``pyarrow.fs`` URI. Members are built by
    task code, which runs only as the caller chooses: ``task`` (their own task file, the imported module or ``Task``),
    or ``trust_task_code=True`` for the copy stored in the sweep (refused if its sha256 changed).
    Weights load with safetensors
    after their sha256 matches the checkpoint index; a mismatch raises ``StorageError``.
    A sweep whose ``load_data`` gave DataFrames takes a DataFrame by its column names, in any order.
    """
    storage = sweep if isinstance(sweep, Storage) else Storage.from_uri(sweep)
    model = _load_ensemble(storage, name, device, task, trust_task_code)
    names = storage.read_table(schema.SWEEP_PATH).to_pylist()[0].get("feature_names")
    model.feature_names = tuple(names) if names else None
    return model


def _load_ensemble(storage: Storage, name: str | int, device: str | torch.device, task: Any,
                   trust_task_code: bool) -> EnsembleModel:
    device = checked_device(device)  # before any member is built: torch would say it only when they are moved
    task = os.fspath(task) if isinstance(task, os.PathLike) else task  # a pathlib.Path, as the sweep's path may be
    if not storage.exists(schema.SWEEP_PATH):  # a mistyped name: said as such, not as a sweep without ensembles
        raise not_a_sweep(storage, storage.uri)
    if schema.read_dataset_row(storage).get("kind") == "custom":
        return _best_custom_model(storage, name, task, trust_task_code, device)
    if not storage.exists(schema.ENSEMBLES_PATH) and predictions_off(storage) and name == "best":
        # No predictions stored, so no ensembles: the sweep's answer is its best checkpoint, shown as a model of its
        # kind shows its outputs (probabilities, the targets' units).
        models = SweepModels(storage, task, trust_task_code)
        best = models.best_checkpoint()
        log.info("load_ensemble: %s ran with prediction_dtype = \"none\" (no ensembles): loading its best "
                 "checkpoint, trial %d epoch %d (%s weights)", storage.uri, best.trial_id, best.epoch, best.weights)
        return _for_inference(_kind_module([models.model(best)], [1.0], read_dataset(storage), None), device)
    record = pick(read_ensembles(storage), name)
    models = SweepModels(storage, task, trust_task_code)
    if record.weights_path:  # a soup: one model with averaged weights, built like its first ingredient
        model = models.with_weights(record.members[0].key.trial_id,
                                    load_state(storage, record.weights_path, record.weights_sha256))
        members, weights = [model], [1.0]
    else:
        members = [models.model(m.key) for m in record.members]
        weights = [m.weight for m in record.members]
    return _for_inference(_kind_module(members, weights, read_dataset(storage), record), device)


def _kind_module(members: Sequence[nn.Module], weights: Sequence[float], dataset: Dataset,
                 record: EnsembleRecord | None) -> EnsembleModel:
    """The members averaged as the sweep's kind says: class probabilities, labels, positions or the targets' units."""
    regression = dataset.kind == "regression"

    def target_stat(v: np.ndarray | None) -> torch.Tensor | None:
        return None if v is None else torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))

    return EnsembleModel(members, weights, _stat(dataset.mean), _stat(dataset.std), record,
                         dataset.target_shape if regression else None,
                         target_stat(dataset.target_mean) if regression else None,
                         target_stat(dataset.target_std) if regression else None,
                         input_dtype=_torch_dtype(dataset.input_dtype), input_shape=tuple(dataset.input_shape),
                         multilabel=dataset.multilabel,
                         positions=dataset.target_shape if dataset.per_position else None,
                         class_dim=stored_class_dim(dataset))


def _best_custom_model(storage: Storage, name: str | int, task: Task | str | None, trust_task_code: bool,
                       device: str | torch.device) -> EnsembleModel:
    """A kind = "custom" sweep's answer: its best checkpoint, standardising inputs as the workers did, returning the
    model's outputs as they are (caviar cannot average outputs whose meaning is the task's own)."""
    if name != "best":
        raise ConfigError(f"ensemble {name!r}: a kind = \"custom\" sweep has no ensembles; name=\"best\" loads its "
                          "best checkpoint")
    models = SweepModels(storage, task, trust_task_code)
    dataset = read_dataset(storage)
    module = EnsembleModel([models.model(models.best_checkpoint())], [1.0], _stat(dataset.mean), _stat(dataset.std),
                           input_dtype=_torch_dtype(dataset.input_dtype), input_shape=tuple(dataset.input_shape),
                           outputs_as_given=True)
    return _for_inference(module, device)


def checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this machine has; one line naming the argument otherwise."""
    try:
        chosen = pick_device(device) if isinstance(device, str) else torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r}: not a torch device (cpu, cuda, cuda:N, mps, or auto)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this machine has no CUDA device; use device='cpu' (or 'auto')")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return chosen


def _for_inference(module: EnsembleModel, device: str | torch.device) -> EnsembleModel:
    """On ``device``, in eval mode, its weights frozen: outputs are plain tensors (``.numpy()`` works on them);
    ``module.requires_grad_(True)`` to fine-tune or take input gradients."""
    module = module.to(checked_device(device)).eval()
    return module.requires_grad_(False)
