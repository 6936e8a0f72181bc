"""Greedy weight-space soup (Wortsman et al. 2022) over a sweep's stored checkpoints.

Start from the best candidate on validation; go down the ranking and add a checkpoint that
shares its architecture (same state-dict names, shapes and dtypes, same module classes)
only if the averaged weights score better on validation. After each averaging the
batch-norm statistics are recomputed with one pass over the training split
(as ``torch.optim.swa_utils.update_bn``): averaged running statistics do not describe the
averaged weights. That pass runs under fixed seeds, so augmented training data gives the same
statistics on every build, and the weights file keeps them. Test metrics are computed once,
for the final soup. Streamed data (torch Datasets or the task's loader functions) is read
through the split's loader, batch by batch. Inputs are standardised with the mean and std the
sweep stored (what ``load_ensemble`` applies), never with a fresh pass over training data that
may be random.

Soups of independently trained models usually land in a worse basin than either model;
checkpoints and EMA weights of one run often average well. Either way the result is
recorded with what was tried (``detail``), so a soup that did not help says so.

Runs in a plain process (the CLI, or the driver at the end of ``run_sweep``): it loads the
task and its data once, builds models from the configs in the trials table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from orchestrator.ensemble import ensembles
from orchestrator.ensemble.ensemble_run import Dataset, SoupBuilder, SoupResult, rank, read_dataset
from orchestrator.ensemble.ensembles import CandidateKey, Member, Objective
from orchestrator.errors import TaskError
from orchestrator.spec.task import Task
from orchestrator.store import schema
from orchestrator.store.storage import Storage, sha256
from worker.data.kinds import IGNORE_INDEX, class_labels, class_scores, labelled
from worker.data.seeds import preserved_randomness, seeded_randomness
from worker.data.splits import Splits, prepare
from worker.load.ensemble_model import SweepModels
from worker.train.predictions import check_stored_summary
from worker.train.trainer import materialise_lazy, model_outputs, pick_device

BN_BATCH = 512
BN_SEED = 0  # the training pass that recomputes batch norm draws its augmentation from this seed: rebuilds agree


def architecture(model: nn.Module) -> tuple[Any, ...]:
    """What must match for two state dicts to be averaged into one working model."""
    shapes = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items())
    return shapes, tuple(type(m).__name__ for m in model.modules())


def average_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform mean of floating-point tensors, in float32 or wider (a float64 model's weights keep their
    precision); integer buffers (``num_batches_tracked``) from the first, as is a tensor every state holds alike (a
    frozen backbone's weights: the mean of three equal float32 values is off by a rounding in one of five)."""
    out = {}
    for name, first in states[0].items():
        if first.is_floating_point() and not all(torch.equal(s[name], first) for s in states[1:]):
            wide = torch.promote_types(first.dtype, torch.float32)
            out[name] = torch.stack([s[name].to(wide) for s in states]).mean(dim=0).to(first.dtype)
        else:
            out[name] = first.clone()
    return out


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recompute_bn(model: nn.Module, x_train: torch.Tensor | Iterable[torch.Tensor], batch_size: int = BN_BATCH) -> bool:
    """Batch-norm statistics from one pass over the training inputs: each batch's mean and variance weighted by its
    number of examples, so a short last batch (1030 rows in batches of 512: 6 of them) counts as its rows do, not as a
    full batch's equal; a last batch of one example is left out, as training leaves it (batch norm raises on it).
    Inputs in memory are read in an order drawn from ``BN_SEED``, as training shuffles them: in their stored order
    (sorted by class, as files listed folder by folder are) each batch's variance would leave out the differences
    between classes.

    ``x_train`` is the inputs in memory, or their batches (a streamed split). Returns whether there
    was any batch norm to recompute.
    """
    if not has_batch_norm(model):
        return False
    if isinstance(x_train, torch.Tensor):
        inputs = x_train
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(BN_SEED)).to(inputs.device)
        x_train = (inputs[order[i : i + batch_size]] for i in range(0, len(inputs), batch_size))
    # As torch's update_bn, but weighted by batch size (update_bn's momentum None weighs batches alike), and a batch
    # norm the model keeps in eval mode while training (a frozen backbone's, by a train() override) keeps its
    # statistics: update_bn reset them for good.
    was_training = model.training
    model.train()
    live = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = {m: m.momentum for m in live}
    for m in live:
        m.reset_running_stats()
    seen = 0
    with torch.no_grad():
        for x in x_train:
            if len(x) == 1 and seen:
                continue
            seen += len(x)
            for m in live:  # running = (1 - n/seen) * running + n/seen * batch: the size-weighted mean so far
                m.momentum = len(x) / seen
            model(x)
    for m in live:
        m.momentum = momenta[m]
    model.train(was_training)
    return True


def _statistic(values: np.ndarray | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A stored statistic as ``Splits`` holds it: ``(1, *input_shape)`` in the inputs' dtype."""
    if values is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(values)).unsqueeze(0).to(dtype)


def with_sweep_statistics(splits: Splits, stored: Dataset) -> Splits:
    """``splits`` standardised with the sweep's stored mean and std instead of their own (equal unless the
    training data is random: an augmenting Dataset, noise added in ``load_data``)."""
    dtype = splits.input_dtype
    mean, std = _statistic(stored.mean, dtype), _statistic(stored.std, dtype)
    same = (mean is None) == (splits.mean is None) and (
        mean is None or (torch.equal(mean, splits.mean.cpu()) and torch.equal(std, splits.std.cpu())))
    if same:
        return splits
    if splits.streams:  # streamed batches are standardised as they are read: new statistics are enough
        return replace(splits, mean=mean, std=std)

    def restandardised(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or not x.is_floating_point():
            return x
        if splits.mean is not None and splits.std is not None:
            x = x * splits.std + splits.mean  # back to the task's inputs, up to rounding
        return x if mean is None or std is None else ((x - mean.to(x.device)) / std.to(x.device)).contiguous()

    return replace(splits, x_train=restandardised(splits.x_train), x_val=restandardised(splits.x_val),
                   x_test=restandardised(splits.x_test), mean=mean, std=std)


class Soup:
    """Everything one greedy soup needs: the sweep's models, the task's data on a device."""

    MAX_EXAMINED = 256  # candidates whose architecture is compared with the best one's

    def __init__(self, storage: Storage, task: Task, device: str = "auto", max_ingredients: int = 16,
                 load_data: Callable[[], Any] | None = None, splits: Splits | None = None):
        self.storage, self.max_ingredients = storage, max_ingredients
        self.models = SweepModels(storage, task)
        self.device = pick_device(device)
        self.eps = 0.0  # floor of log losses: 0 (exact), or ensembles.CLIP for a sweep stored as probabilities
        self.splits = self._checked_splits(storage, task, load_data, splits)
        self._arch: dict[int, tuple[Any, ...]] = {}

    def _checked_splits(self, storage: Storage, task: Task, load_data: Callable[[], Any] | None,
                        splits: Splits | None) -> Splits:
        """``splits`` (the data the sweep's contract check prepared), else ``load_data()`` prepared here; either way
        standardised with the statistics the sweep stored, the ones ``load_ensemble`` applies."""
        stored = read_dataset(storage)
        if splits is None:  # a fresh pass over random (augmented) training data would give other statistics
            splits = prepare(self.models.run_load_data(load_data), normalize=stored.mean is not None, kind=task.kind,
                             standardize_targets=task.standardize_targets,
                             task_statistics=None if stored.mean is None else (stored.mean, stored.std))
        else:
            splits = with_sweep_statistics(splits, stored)
        kind = splits.target_kind  # multi-label: stored flat, as (example, label) pairs; per position: the labelled

        def rows(y: torch.Tensor) -> np.ndarray:
            flat = class_labels(y, kind).cpu().numpy()
            return flat[flat != IGNORE_INDEX] if kind.per_position else flat

        if not (np.array_equal(rows(splits.y_val), stored.y_val)
                and np.array_equal(rows(splits.y_test), stored.y_test)):
            raise TaskError("load_data: its val/test labels differ from the ones the sweep stored; a soup needs the "
                            "sweep's data")
        check_stored_summary(schema.read_dataset_row(storage), splits)  # inputs the members never saw, too
        return splits.to(self.device)

    def _train_inputs(self) -> torch.Tensor | Iterator[torch.Tensor]:
        """The training inputs as the members trained on them: in memory, or a streamed split's batches."""
        if not self.splits.streams:
            assert self.splits.x_train is not None
            return self.splits.x_train
        loader = self.splits.streams["train"].reading(BN_BATCH, shuffle_seed=BN_SEED)  # batches as training mixes them
        return (self.splits.normalise(x.to(self.device, non_blocking=True)) for x, _ in loader)

    def arch_of(self, trial_id: int) -> tuple[Any, ...]:
        # Built on CPU: the meta device would skip the allocation but pulls in seconds of torch imports.
        if trial_id not in self._arch:
            model = self.models.build(trial_id)
            materialise_lazy(model, lambda: self.splits.sample(2)[0].cpu())  # nn.LazyLinear: shapes come with an input
            self._arch[trial_id] = architecture(model)
        return self._arch[trial_id]

    def peers(self, ranked: Sequence[CandidateKey]) -> list[CandidateKey]:
        """Stored checkpoints that share the best one's architecture, best first, at most ``max_ingredients - 1``."""
        arch, out = self.arch_of(ranked[0].trial_id), []
        for key in ranked[1 : self.MAX_EXAMINED]:
            if len(out) >= self.max_ingredients - 1:
                break
            if key in self.models.checkpoints and self.arch_of(key.trial_id) == arch:
                out.append(key)
        return out

    def score(self, model: nn.Module, state: dict[str, torch.Tensor], *, fresh_bn: bool, split: str = "val",
              objective: Objective | None = None, what: str = "the soup") -> tuple[Scores, dict[str, torch.Tensor]]:
        """(accuracy, log loss, the objective's value or None) and the state evaluated; BN recomputed first if asked."""
        model.load_state_dict(state)
        with seeded_randomness(BN_SEED, self.device):  # augmented training batches: the same ones every build
            recomputed = fresh_bn and recompute_bn(model, self._train_inputs())
        if recomputed:  # the weights file holds these statistics: what was scored is what loads
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        x, y = (self.splits.x_val, self.splits.y_val) if split == "val" else (self.splits.x_test, self.splits.y_test)
        if self.splits.streams:  # streamed: read in order through the split's loader, standardised per batch
            x = self.splits.streams[split]
        logits = model_outputs(model, x, splits=self.splits, device=self.device)
        kind = self.splits.target_kind  # multi-label: rows of (example, label) pairs, as the stored predictions
        scores, labels = class_scores(logits.float(), kind), class_labels(y, kind)
        if kind.per_position:  # the labelled positions, as the stored predictions hold them
            scores, labels = labelled(scores, labels)
        # log-probabilities, as the workers store them: a confident mistake's log loss is its own, not a clipped one
        log_probs, labels = torch.log_softmax(scores, dim=1).cpu().double().numpy(), labels.cpu().numpy()
        value = None if objective is None else objective.value(ensembles.probabilities(log_probs), split, what)
        return Scores(ensembles.accuracy(log_probs, labels), ensembles.nll(log_probs, labels, self.eps), value), state

    def build(self, ranked: Sequence[CandidateKey], metric: str = "accuracy",
              objective: Objective | None = None, eps: float = 0.0) -> SoupResult | None:
        """Greedy soup around the best candidate; ``ranked`` is best first on validation (by ``objective`` if given).
        ``eps``: the floor of the other rows' log losses (``ensembles.clip_of``), so that all compare alike."""
        if not ranked:
            return None
        self.eps = eps
        base, peers = ranked[0], self.peers(ranked)
        states = [self.models.state(base)]
        model = self.models.with_weights(base.trial_id, states[0]).to(self.device)  # weights that do not fit: named
        best, soup_state = self.score(model, states[0], fresh_bn=False, objective=objective,
                                      what="the soup's base")  # its own statistics are right
        tried: list[dict[str, Any]] = [{**_key(base), **best.row(objective), "accepted": True}]
        for key in peers:
            candidate = states + [self.models.state(key)]
            scores, c_state = self.score(model, average_states(candidate), fresh_bn=True, objective=objective,
                                         what=f"the soup adding {ensembles.describe(key)}")
            accepted = scores.rank(metric, objective) < best.rank(metric, objective)
            tried.append({**_key(key), **scores.row(objective), "accepted": accepted})
            if accepted:
                states, best, soup_state = candidate, scores, c_state
        test, _ = self.score(model, soup_state, fresh_bn=False, split="test", objective=objective)
        data = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in soup_state.items()})
        digest = sha256(data)
        rel = schema.soup_weights_path(digest)
        self.storage.write_bytes(rel, data)
        accepted_keys = [base] + [k for k, t in zip(peers, tried[1:]) if t["accepted"]]
        detail = {
            "base": _key(base), "peers_with_same_architecture": len(peers), "tried": tried,
            "accepted": len(accepted_keys), "helped": len(accepted_keys) > 1,
            "bn_recomputed": has_batch_norm(model) and len(accepted_keys) > 1,
            "note": _note(len(peers), len(accepted_keys)),
        }
        members = tuple(Member(k, 1.0 / len(accepted_keys)) for k in accepted_keys)
        return SoupResult(members, best.accuracy, best.log_loss, test.accuracy, test.log_loss, rel, digest,
                          detail, best.objective, test.objective)


@dataclass(frozen=True)
class Scores:
    """One evaluation of a soup on one split."""

    accuracy: float
    log_loss: float
    objective: float | None = None

    def rank(self, metric: str, objective: Objective | None) -> tuple[float, float]:
        """Lower is better: by the objective (then log loss) when given, else by ``metric``."""
        if objective is None:
            return rank(self.accuracy, self.log_loss, metric)
        return objective.loss(self.objective), self.log_loss

    def row(self, objective: Objective | None) -> dict[str, Any]:
        out: dict[str, Any] = {"val_accuracy": self.accuracy, "val_log_loss": self.log_loss}
        if objective is not None:
            out[objective.name] = self.objective
        return out


def _key(key: CandidateKey) -> dict[str, Any]:
    return {"trial_id": key.trial_id, "epoch": key.epoch, "weights": key.weights}


def _note(peers: int, accepted: int) -> str:
    if peers == 0:
        return "no other checkpoint shares the best candidate's architecture: the soup is that candidate"
    if accepted == 1:
        return f"none of {peers} same-architecture checkpoints improved validation when averaged in"
    return f"{accepted - 1} of {peers} same-architecture checkpoints improved validation when averaged in"


def soup_builder(storage: Storage, task: Task, device: str = "auto", max_ingredients: int = 16,
                 load_data: Callable[[], Any] | None = None, splits: Splits | None = None) -> SoupBuilder:
    """A builder for ``ensemble_run.build``; ``splits`` when the sweep already prepared them, else the task's data
    loads (``load_data``, else the task's) only if a soup is asked for."""

    def build(ranked: Sequence[CandidateKey], metric: str, objective: Objective | None = None,
              eps: float = 0.0) -> SoupResult | None:
        # It runs in the caller's process (run_sweep in a notebook): each build_model draws its initial weights
        # from torch's global generator, which the caller's next draws would otherwise start from.
        with preserved_randomness(pick_device(device)):
            return Soup(storage, task, device, max_ingredients, load_data, splits).build(ranked, metric, objective, eps)

    return build
