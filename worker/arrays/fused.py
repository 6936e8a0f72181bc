"""Fused trial arrays: K trials whose models share a structure, trained as one batched model.

Small models leave the hardware idle: each trial is a stream of tiny kernel launches with
Python between them. An array stacks its members' parameters along a leading member
dimension and runs one batched kernel per layer for all of them (HFTA, Wang et al. 2021).

Every member stays a full trial: it is initialised exactly as :class:`~worker.train.trainer.TrialRun`
initialises it (``torch.manual_seed(seed)`` then ``build_model(config)``), draws its own data
order from its own generator, keeps its own hyperparameters (as per-member tensors), optimizer
state, schedule and EMA, and yields the same per-epoch row and an ordinary un-stacked state
dict. The optimizer update is torch.optim's single-tensor formula vectorised over members,
so a member's metrics equal the unfused run's to float rounding (``tests/worker/test_fused.py``).

Layout: all trainable parameters of member ``k`` live in row ``k`` of one ``[K, P]`` leaf
tensor; layers see views of it. The optimizer, EMA, gradient norms, compaction and
checkpoints are then a handful of ops on one tensor, whatever the depth of the model.

Two engines run the stacked forward pass:

- ``bmm``: an ``nn.Sequential`` of Linear, elementwise activations, Dropout, BatchNorm1d and
  Flatten becomes ``baddbmm`` calls. Each member may have its own dropout rate.
- ``vmap``: any other module, through ``torch.func.functional_call`` under ``vmap``
  (``randomness="different"``); dropout rates must then agree, as they are part of the module.

On this 2-core CPU, ``bmm`` trained 32 digits MLPs about 1.3x faster than ``vmap``
(``benchmarks/fused_digits.py``), so it is chosen whenever the model allows.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from orchestrator.errors import NotFusable, TaskError
from orchestrator.spec.task import Task, unfusable_reason
from worker.arrays.fused_diagnostics import (
    Captured,
    MemberDiagnostics,
    Norms,
    capture_plain,
    first_step_norms,
    owner_types,
    probe_batch,
    record_epoch,
    stack_captures,
)
from worker.data.kinds import TargetKind, class_scores, loss_function, objective_and_mode, predicted_classes
from worker.data.seeds import seed_trial
from worker.data.splits import Splits, padding_rows, skips_single_batch
from worker.data.streams import Stream, eval_rows
from worker.train.diagnostics import SKIPPED_MODULES, DiagnosticsOptions
from worker.train.ema import HALF, average_buffer, ema_decay_at
from worker.train.optim import build_optimizer, build_schedule, setting, sparse_embeddings, step_schedule
from worker.train.trainer import TrialSpec, evaluate_split, measured_width, natural_outputs, split_values

ENGINES = ("auto", "bmm", "vmap")
# torch.optim state tensors, per optimizer kind, in the names torch's state_dict uses.
OPT_STATE = {"sgd": (), "momentum": ("momentum_buffer",), "nesterov": ("momentum_buffer",), "adagrad": ("sum",),
             "rmsprop": ("square_avg",), "adam": ("exp_avg", "exp_avg_sq"), "adamw": ("exp_avg", "exp_avg_sq")}
_COUNTS_STEPS = ("adagrad", "rmsprop", "adam", "adamw")  # kinds whose torch state holds a "step" tensor
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus, nn.Mish,
                nn.Hardtanh, nn.ReLU6, nn.Identity, nn.SELU, nn.CELU, nn.Hardswish, nn.Hardsigmoid)


# -- what a member is ----------------------------------------------------------------------
def optimizer_kind(config: Mapping[str, Any]) -> str:
    return str(config.get("optimizer", "adam"))


def optimizer_hparams(config: Mapping[str, Any]) -> tuple[torch.optim.Optimizer, dict[str, Any]]:
    """A torch optimizer over one dummy parameter, built by the same code as the real one.

    Reading the hyperparameters from it keeps defaults and validation in one place, and it
    carries the member's learning-rate schedule (schedulers only touch ``param_groups``).
    """
    opt = build_optimizer(config, [nn.Parameter(torch.zeros(1))])
    group = opt.param_groups[0]
    # Options worker.train.optim never sets; refuse rather than silently train another optimizer.
    unusual = {"amsgrad": False, "centered": False, "maximize": False, "dampening": 0, "lr_decay": 0,
               "initial_accumulator_value": 0}
    if isinstance(opt, torch.optim.RMSprop):
        unusual["momentum"] = 0
    odd = [k for k, default in unusual.items() if group.get(k, default) != default]
    if odd:
        raise NotFusable(f"optimizer: {', '.join(odd)} not supported in a fused array")
    return opt, group


def structure_signature(model: nn.Module, per_member_dropout: bool) -> str:
    """Everything that must agree for models to share an array: modules, shapes, dtypes."""
    parts = []
    for name, m in model.named_modules():
        per_member = per_member_dropout and isinstance(m, nn.Dropout)
        extra = "" if per_member else m.extra_repr()
        # Plain attributes too: the vmap engine runs every member through the first one's module, so a rate held as
        # a number (nn.MultiheadAttention(dropout=p), F.dropout(x, self.p)) would be that member's for all.
        settings = "" if per_member else repr(sorted((k, v) for k, v in vars(m).items() if not k.startswith("_")
                                                      and k != "training" and _plain_value(v)))
        parts.append(f"{name}:{type(m).__name__}({extra}){settings}")
    parts += [f"{k}:{tuple(v.shape)}:{v.dtype}:{getattr(v, 'requires_grad', False)}"
              for k, v in model.state_dict(keep_vars=True).items()]
    return "\n".join(parts)


def _plain_value(v: Any) -> bool:
    if isinstance(v, tuple):
        return all(_plain_value(x) for x in v)
    return v is None or isinstance(v, (bool, int, float, str))


def tied_tensors(model: nn.Module) -> str | None:
    """Names sharing one tensor (``out.weight = embed.weight``), as ``'b.weight is a.weight'``; None when none do.

    A member's row holds each parameter once, under its first name: a tied second name would be stacked as a frozen
    copy of the initial weights, and the member would train another model than its plain twin.
    """
    first: dict[int, str] = {}
    for name, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        if id(t) in first and first[id(t)] != name:
            return f"{name} is {first[id(t)]}"
        first.setdefault(id(t), name)
    return None


def non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers registered with ``persistent=False``: part of the model, never of its state dict."""
    persistent = set(model.state_dict(keep_vars=True))
    return {name: b for name, b in model.named_buffers() if name not in persistent}


def sequential_supported(model: nn.Module) -> bool:
    if not isinstance(model, nn.Sequential):
        return False
    if not all(p.requires_grad for p in model.parameters()):
        return False  # a frozen weight is stacked with the buffers, [out, in]: the vmap engine reads it there
    if any(parametrize.is_parametrized(m) for m in model.children()):
        return False  # weight_norm, spectral_norm: the weight is computed from others the vmap engine reads
    for m in model.children():
        if isinstance(m, nn.BatchNorm1d) and m.momentum is None:
            return False  # a cumulative average would depend on when each member joined
        if isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) != (1, -1):
            return False
        if not isinstance(m, (nn.Linear, nn.Dropout, nn.BatchNorm1d, nn.Flatten, *_ELEMENTWISE)):
            return False
    return True


# -- stacked forward passes ----------------------------------------------------------------
class SequentialEngine:
    """``nn.Sequential`` MLPs as batched matmuls over the member dimension."""

    name = "bmm"

    def __init__(self, template: nn.Sequential):
        self.ops: list[tuple[str, str, Any]] = []
        self.transposed: set[str] = set()  # weights stored as [in, out]: bmm then needs no copy per step
        for name, m in template.named_children():
            if isinstance(m, nn.Linear):
                self.ops.append(("linear", name, m.bias is not None))
                self.transposed.add(f"{name}.weight")
            elif isinstance(m, nn.Dropout):
                self.ops.append(("dropout", name, None))
            elif isinstance(m, nn.BatchNorm1d):
                self.ops.append(("bn", name, m))
            elif isinstance(m, nn.Flatten):
                self.ops.append(("flatten", name, None))
            else:
                self.ops.append(("act", name, copy.deepcopy(m)))

    def forward(self, p: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], x: torch.Tensor, training: bool,
                rates: Mapping[str, torch.Tensor], capture: Captured | None = None) -> torch.Tensor:
        """The stacked forward pass; ``capture`` collects each layer's output as diagnostics name it."""
        h = x
        for kind, name, extra in self.ops:
            if kind == "linear":
                w = p[f"{name}.weight"]  # [K, in, out]
                shape = h.shape
                flat = h.reshape(shape[0], -1, shape[-1])
                flat = torch.baddbmm(p[f"{name}.bias"].unsqueeze(1), flat, w) if extra else torch.bmm(flat, w)
                h = flat.reshape(*shape[:-1], w.shape[2])
            elif kind == "act":
                h = extra(h)
            elif kind == "dropout" and training:
                h = _dropout(h, rates[name])
            elif kind == "bn":
                h = _batch_norm(h, p, b, name, extra, training)
            elif kind == "flatten":
                h = h.flatten(2)
            if capture is not None and kind in ("linear", "bn", "act") and not isinstance(extra, SKIPPED_MODULES):
                capture.append((name, {"linear": "Linear", "bn": "BatchNorm1d"}.get(kind, type(extra).__name__), h))
        return h


def _dropout(h: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Inverted dropout with a rate per member (the ``[K]`` tensor ``rate``)."""
    r = rate.view(-1, *([1] * (h.dim() - 1)))
    keep = torch.rand_like(h) >= r
    return h * keep * (1.0 / (1.0 - r)).to(h.dtype)


def _batch_norm(h: torch.Tensor, p: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], name: str,
                m: nn.BatchNorm1d, training: bool) -> torch.Tensor:
    """Per-member BN as one BN over ``K * C`` channels: the same kernel, statistics per member."""
    k, batch = h.shape[0], h.shape[1]
    x = h.transpose(0, 1).reshape(batch, k * h.shape[2], *h.shape[3:])
    stats = m.track_running_stats
    mean = b[f"{name}.running_mean"].view(-1) if stats else None  # views: BN updates the stacked buffers in place
    var = b[f"{name}.running_var"].view(-1) if stats else None
    weight = p[f"{name}.weight"].reshape(-1) if m.affine else None
    bias = p[f"{name}.bias"].reshape(-1) if m.affine else None
    use_batch = training or not stats
    if training and stats:
        b[f"{name}.num_batches_tracked"].add_(1)
    out = F.batch_norm(x, mean, var, weight, bias, use_batch, m.momentum or 0.0, m.eps)
    return out.reshape(batch, k, *h.shape[2:]).transpose(0, 1)


class VmapEngine:
    """Any module: ``functional_call`` on a weightless copy, vmapped over members."""

    name = "vmap"

    def __init__(self, template: nn.Module):
        from torch.func import functional_call, vmap

        self.base = copy.deepcopy(template).to("meta")
        # Non-persistent buffers (a causal mask, position ids) are in no state dict, so the array stacks none: each
        # member's are the template's (FusedArray checks they agree), kept real on the weightless copy.
        for name, buffer in non_persistent_buffers(template).items():
            module, _, attr = name.rpartition(".")
            self.base.get_submodule(module)._buffers[attr] = buffer.detach().clone()

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (x,))

        self.batched = vmap(one, randomness="different")

    def forward(self, p: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], x: torch.Tensor, training: bool,
                rates: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.base.train(training)
        return self.batched(dict(p), dict(b), x)


# -- one member's bookkeeping ----------------------------------------------------------------
@dataclass
class Member:
    spec: TrialSpec
    optimizer: torch.optim.Optimizer  # over a dummy parameter: holds lr, hyperparameters and the schedule's state
    scheduler: Any
    generator: torch.Generator
    ema_decay: float | None
    grad_clip: float
    dropout: dict[str, float]  # Dropout module name -> this member's rate
    epoch: int = 0
    steps: int = 0  # optimizer steps taken (Adam's bias correction counts these)
    ema_steps: int = 0
    diagnostics: MemberDiagnostics | None = None  # per-layer rows, as a plain trial writes them

    @property
    def trial_id(self) -> int:
        return self.spec.trial_id

    @property
    def group(self) -> dict[str, Any]:
        return self.optimizer.param_groups[0]


@dataclass
class Stack:
    """Every per-member tensor of an array, member dimension first: one row per member."""

    flat: torch.Tensor  # [K, P] trainable parameters, a leaf while training
    ema: torch.Tensor  # [K, P]
    opt: dict[str, torch.Tensor]  # optimizer state name -> [K, P]
    buffers: dict[str, torch.Tensor]  # state-dict name -> [K, ...] (BN running statistics)
    ema_buffers: dict[str, torch.Tensor]
    rates: dict[str, torch.Tensor]  # Dropout module name -> [K]

    def _parts(self) -> dict[str, Any]:
        return {"flat": self.flat.detach(), "ema": self.ema, "opt": self.opt, "buffers": self.buffers,
                "ema_buffers": self.ema_buffers, "rates": self.rates}

    def map(self, fn: Any) -> Stack:
        parts = {k: ({n: fn(t) for n, t in v.items()} if isinstance(v, dict) else fn(v))
                 for k, v in self._parts().items()}
        parts["flat"] = parts["flat"].contiguous().requires_grad_(True)
        return Stack(**parts)

    def select(self, rows: Sequence[int]) -> Stack:
        index = torch.tensor(list(rows), dtype=torch.long, device=self.flat.device)
        return self.map(lambda t: t.index_select(0, index))

    def tensors(self) -> list[torch.Tensor]:
        out = []
        for v in self._parts().values():
            out += list(v.values()) if isinstance(v, dict) else [v]
        return out

    @staticmethod
    def cat(a: Stack, b: Stack) -> Stack:
        pa, pb = a._parts(), b._parts()
        parts = {k: ({n: torch.cat([t, pb[k][n]]) for n, t in v.items()} if isinstance(v, dict)
                     else torch.cat([v, pb[k]])) for k, v in pa.items()}
        parts["flat"] = parts["flat"].requires_grad_(True)
        return Stack(**parts)


class FusedArray:
    """K trials trained as one model, an epoch at a time; members can leave (and join) between epochs."""

    def __init__(self, task: Task, splits: Splits, specs: Sequence[TrialSpec], device: torch.device,
                 engine: str = "auto", resume_states: Mapping[int, Mapping[str, Any]] | None = None,
                 diagnostics: bool = True):
        if engine not in ENGINES:
            raise NotFusable(f"engine: unknown {engine!r} (one of {', '.join(ENGINES)})")
        for hook in ("train_epoch", "build_optimizer"):
            if task.get(hook):
                raise NotFusable(f"task defines {hook}: its trials train one at a time")
        contract = contract_blocker(task, splits.target_kind, splits.streams)
        if contract:
            raise NotFusable(contract)
        self.task, self.splits, self.device, self.requested_engine = task, splits, device, engine
        self.loss_fn = task.get("loss_fn")
        self._losses_one_by_one = False  # the task's loss_fn cannot be vmapped: called once per member
        self.members: list[Member] = []
        self.stack: Stack | None = None
        self.kind: str | None = None
        self.batch_size: int | None = None
        self.signature: str | None = None
        self.engine: SequentialEngine | VmapEngine | None = None
        self.layout: list[Column] = []  # where each trainable parameter lives in a member's row
        self.keys: list[str] = []  # the plain model's state-dict keys, in order
        self.last_epoch_seconds = 0.0
        self.output_shape: tuple[int, ...] | None = None  # one member's outputs per example, once evaluated
        self._plain: nn.Module | None = None
        self.diagnostics_options = DiagnosticsOptions.from_task(task.get("diagnostics")) if diagnostics else None
        self._first_step: list[Norms] = []  # this epoch's first-step norms per member, for diagnostics
        self._probe_x: torch.Tensor | None = None
        self._probe_failed = False  # as a plain trial: a model the probe cannot run loses only its activation rows
        self.padding_dims: torch.Tensor | None = None  # embedding padding rows in a member's row: no gradient
        if specs:
            self.add(specs, resume_states)

    # -- membership ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.members)

    @property
    def trial_ids(self) -> list[int]:
        return [m.trial_id for m in self.members]

    def index(self, trial_id: int) -> int:
        for i, m in enumerate(self.members):
            if m.trial_id == trial_id:
                return i
        raise KeyError(f"trial {trial_id} is not in this array")

    def member(self, trial_id: int) -> Member:
        return self.members[self.index(trial_id)]

    def add(self, specs: Sequence[TrialSpec], resume_states: Mapping[int, Mapping[str, Any]] | None = None) -> None:
        """Build each trial's model as TrialRun would, check that it fits the array, and stack it on.

        Either every trial joins or none does (the array is untouched when one does not fit).
        """
        kind, batch_size = self.kind, self.batch_size
        models, members, states = [], [], []
        for spec in specs:
            config = dict(spec.config)
            kind = kind or optimizer_kind(config)
            batch_size = batch_size or int(config.get("batch_size", 64))
            if optimizer_kind(config) != kind:
                raise NotFusable(f"optimizer: trial {spec.trial_id} uses {optimizer_kind(config)!r}, "
                                 f"the array {kind!r}")
            if int(config.get("batch_size", 64)) != batch_size:
                raise NotFusable(f"batch_size: trial {spec.trial_id} uses {config.get('batch_size', 64)}, "
                                 f"the array {batch_size}")
            seed_trial(spec.seed)  # as TrialRun does: a build_model drawing from numpy builds its plain twin
            try:
                model = self.task.get("build_model")(config).to(self.device)
            except Exception as exc:
                raise TaskError(f"build_model raised {type(exc).__name__}: {exc}") from exc
            self._check_structure(model, spec.trial_id)
            opt, _ = optimizer_hparams(config)
            scheduler = build_schedule(config, opt, spec.max_epochs)
            opt._opt_called = True  # type: ignore[attr-defined]  # the array steps for it: no "step order" warning
            ema_decay = config.get("ema_decay")
            if ema_decay and not 0.0 < float(ema_decay) < 1.0:
                raise ValueError(f"ema_decay must lie in (0, 1), got {ema_decay}")
            members.append(Member(spec, opt, scheduler, torch.Generator().manual_seed(spec.seed),
                                  float(ema_decay) if ema_decay else None,
                                  float(setting(config, "grad_clip", math.inf)),
                                  {n: float(m.p) for n, m in model.named_modules() if isinstance(m, nn.Dropout)}))
            if self._plain is None:  # one plain model of the structure: predictions and diagnostics load into it
                self._plain = copy.deepcopy(model).eval()
            if self.diagnostics_options is not None:
                ids = {"trial_id": spec.trial_id, "attempt": spec.attempt, "stage": spec.stage}
                members[-1].diagnostics = MemberDiagnostics(ids, spec.max_epochs, self.diagnostics_options)
            state = (resume_states or {}).get(spec.trial_id)
            if state is not None:
                model.load_state_dict(state["model"])
            models.append(model)
            states.append(state)
        if not models:
            return
        new = self._stack_models(models, members)
        for row, (member, state) in enumerate(zip(members, states)):
            if state is not None:
                self._load_resume(member, state, new, row)
        self.kind, self.batch_size = kind, batch_size
        self.stack = Stack.cat(self.stack, new) if self.stack is not None else new
        self.members.extend(members)

    def _check_structure(self, model: nn.Module, trial_id: int) -> None:
        if sparse := sparse_embeddings(model):  # their gradients cannot be stacked: torch raised "reshape is not ..."
            raise NotFusable(f"model: embedding {sparse[0]!r} has sparse=True, and a fused array trains dense "
                             "gradients only: its trials train one at a time (fuse = \"auto\" or \"off\"), or set "
                             "sparse=False")
        tied = tied_tensors(model)
        if tied:
            raise NotFusable(f"model: {tied}: tied weights would be stacked as two tensors and trained apart")
        if self.engine is None:
            use_bmm = sequential_supported(model) if self.requested_engine == "auto" else self.requested_engine == "bmm"
            if use_bmm and not sequential_supported(model):
                raise NotFusable("engine: bmm needs an nn.Sequential of Linear/activation/Dropout/BatchNorm1d/Flatten")
            self.engine = SequentialEngine(model) if use_bmm else VmapEngine(model)  # type: ignore[arg-type]
            self.signature = structure_signature(model, per_member_dropout=use_bmm)
            transposed = getattr(self.engine, "transposed", set())
            self.layout, offset = [], 0
            for n, p in model.named_parameters():
                if p.requires_grad:
                    self.layout.append(Column(n, p.shape, offset, p.numel(), n in transposed))
                    offset += p.numel()
            self.keys = list(model.state_dict().keys())
            # Row positions of embedding padding rows: torch's vmap rule for the embedding backward zeroes the
            # padding row of the first member only, so the others would train theirs (their plain twins do not).
            rows = padding_rows(model)
            dims = [c.offset + row * c.shape[1] + d for c in self.layout if c.name in rows
                    for row in [rows[c.name]] for d in range(c.shape[1])]
            self.padding_dims = torch.tensor(dims, dtype=torch.long, device=self.device) if dims else None
            return
        if structure_signature(model, per_member_dropout=self.engine.name == "bmm") != self.signature:
            raise NotFusable(f"model: trial {trial_id} builds a model of another structure than the array's")
        shared = non_persistent_buffers(self.plain_model())
        for name, buffer in non_persistent_buffers(model).items():
            if name not in shared or not torch.equal(buffer, shared[name].to(buffer.device)):
                raise NotFusable(f"model: trial {trial_id}'s non-persistent buffer {name!r} differs from the array's")

    def _stack_models(self, models: list[nn.Module], members: list[Member]) -> Stack:
        trainable = {c.name for c in self.layout}
        with torch.no_grad():
            flat = torch.stack([self._row(dict(m.named_parameters())) for m in models]) if trainable \
                else torch.zeros(len(models), 0, device=self.device)
            buffers = {k: torch.stack([m.state_dict()[k].detach() for m in models]) for k in self.keys
                       if k not in trainable}
            rates = {name: torch.tensor([m.dropout[name] for m in members], device=self.device)
                     for name in members[0].dropout}
            # A half-precision array's EMA in float32: in bfloat16 an update of (1 - ema_decay) of a step rounds away
            ema = flat.to(torch.float32, copy=True) if flat.dtype in HALF else flat.clone()
            return Stack(flat.contiguous().requires_grad_(True), ema,
                         {s: torch.zeros_like(flat) for s in OPT_STATE[optimizer_kind(members[0].spec.config)]},
                         buffers, {k: v.clone() for k, v in buffers.items()}, rates)

    def drop(self, trial_ids: Sequence[int]) -> None:
        """Compact the array: the members leave and stop costing compute."""
        gone = set(trial_ids)
        keep = [i for i, m in enumerate(self.members) if m.trial_id not in gone]
        if len(keep) == len(self.members):
            return
        assert self.stack is not None
        self.stack = self.stack.select(keep) if keep else None
        self.members = [self.members[i] for i in keep]

    # -- one epoch -------------------------------------------------------------------------
    def train_epoch(self, trial_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """One epoch for every member (or only ``trial_ids``; the others wait, costing nothing).

        Returns one row per trained member, in member order, as TrialRun.train_epoch makes it.
        """
        if trial_ids is None or set(trial_ids) >= set(self.trial_ids):
            return self._train_epoch()
        assert self.stack is not None
        wanted = set(trial_ids)
        active = [i for i, m in enumerate(self.members) if m.trial_id in wanted]
        idle = [i for i, m in enumerate(self.members) if m.trial_id not in wanted]
        parked, parked_members = self.stack.select(idle), [self.members[i] for i in idle]
        self.stack, self.members = self.stack.select(active), [self.members[i] for i in active]
        try:
            return self._train_epoch() if active else []
        finally:
            self.stack = Stack.cat(self.stack, parked)
            self.members += parked_members

    def _train_epoch(self) -> list[dict[str, Any]]:
        if not self.members:
            return []
        assert self.stack is not None
        started = time.perf_counter()
        lrs = [float(m.group["lr"]) for m in self.members]
        stats = self._standard_epoch(lrs)
        s, st = self.splits, self.stack
        val_loss, val_acc, val_log_loss = self._evaluate(st.flat, st.buffers, s.x_val, s.y_val)
        ema_loss = ema_acc = None
        if any(m.ema_decay for m in self.members):
            ema_loss, ema_acc, _ = self._evaluate(st.ema.to(st.flat.dtype), st.ema_buffers, s.x_val, s.y_val)
        for i, m in enumerate(self.members):
            step_schedule(m.scheduler, val_loss[i] if math.isfinite(val_loss[i]) else math.inf)
            m.epoch += 1
        self._diagnose()
        seconds = time.perf_counter() - started
        self.last_epoch_seconds = seconds
        share = seconds / len(self.members)  # each member's share of the array's time
        rows = []
        for i, m in enumerate(self.members):
            row: dict[str, Any] = {
                "trial_id": m.spec.trial_id, "attempt": m.spec.attempt, "epoch": m.epoch, "stage": m.spec.stage,
                # class indices only (contract_blocker): the loss is already in the units val_loss is in
                "train_loss": stats["train_loss"][i], "train_loss_original": stats["train_loss"][i],
                "train_accuracy": stats["train_accuracy"][i],
                "val_loss": val_loss[i], "val_accuracy": val_acc[i], "metrics": {"val_log_loss": val_log_loss[i]},
                "score": val_acc[i] if self.task.metric == "accuracy" else -val_loss[i],
                "lr": lrs[i], "grad_norm": stats["grad_norm"][i], "update_ratio": stats["update_ratio"][i],
            }
            if m.ema_decay and ema_loss is not None and ema_acc is not None:
                row["ema_val_loss"], row["ema_val_accuracy"] = ema_loss[i], ema_acc[i]
            row["epoch_seconds"] = share
            row["samples_per_second"] = len(s.x_train) / share if share > 0 else None
            rows.append(row)
        return rows

    def _diagnose(self) -> None:
        """Every member's per-layer rows for the epoch just trained (worker/arrays/fused_diagnostics.py)."""
        if self.diagnostics_options is None or self.stack is None:
            return
        st, k = self.stack, len(self.members)
        flat = st.flat.detach()
        if self._probe_x is None:
            self._probe_x = probe_batch(self.splits.x_train, self.diagnostics_options)
        x = self._probe_x

        def capture() -> Captured:
            if self._probe_failed:
                return []
            try:
                if isinstance(self.engine, SequentialEngine):
                    out: Captured = []
                    self.engine.forward(self._views(flat), st.buffers, x.expand(k, *x.shape), False, st.rates, out)
                    return out
                model = self.plain_model()
                per_member = []
                for i in range(k):
                    model.load_state_dict(self._member_state(i))
                    per_member.append(capture_plain(model, x))
                return stack_captures(per_member)
            except Exception:  # diagnostics never end a trial
                self._probe_failed = True
                return []

        members = [(m.diagnostics, m.epoch) for m in self.members if m.diagnostics is not None]
        record_epoch(members, self._views(flat), owner_types(self.plain_model()), self._first_step, capture)
        self._first_step = []

    def _standard_epoch(self, lrs: list[float]) -> dict[str, list[float]]:
        assert self.stack is not None and self.batch_size is not None
        s, st, k, dev = self.splits, self.stack, len(self.members), self.device
        orders = torch.stack([torch.randperm(len(s.x_train), generator=m.generator) for m in self.members]).to(dev)
        xs, ys = s.x_train[orders], s.y_train[orders]  # [K, N, ...]: each member's epoch in its own order
        n_total = len(s.x_train)
        if skips_single_batch(self.plain_model(), s, self.batch_size):
            n_total -= 1  # as TrialRun: batch norm cannot train on a last batch of one example
        n_batches = math.ceil(n_total / self.batch_size)
        zeros = torch.zeros(k, dtype=torch.float64, device=dev)
        total_loss, total_correct, seen, grad_norm_sum, steps = (zeros.clone() for _ in range(5))
        update_ratio = torch.full((k,), math.nan, dtype=torch.float64, device=dev)
        live = torch.ones(k, dtype=torch.bool, device=dev)
        clip = torch.tensor([m.grad_clip for m in self.members], device=dev)
        clipping = bool(torch.isfinite(clip).any())
        hyper = _Hyper(self.members, lrs, dev, st.flat.dtype)
        halts: list[tuple[int, Stack, int, int]] = []
        for i, start in enumerate(range(0, n_total, self.batch_size)):
            xb, yb = xs[:, start : start + self.batch_size], ys[:, start : start + self.batch_size]
            logits = self._forward(st.flat, st.buffers, st.rates, xb, training=True)
            losses = self._losses(logits, yb)
            st.flat.grad = None
            losses.sum().backward()  # members share no parameters: each gets its own loss's gradient
            grad = st.flat.grad
            assert grad is not None
            with torch.no_grad():
                if self.padding_dims is not None:
                    grad[:, self.padding_dims] = 0.0
                norms = _member_norms(grad, self.sizes)
                if clipping:
                    grad.mul_(torch.clamp(clip / (norms + 1e-6), max=1.0).unsqueeze(1))
                watch = i == 0 and any(m.diagnostics is not None for m in self.members)
                before = st.flat.detach().clone() if i == n_batches - 1 or watch else None
                self._step(st, grad, hyper)
                if watch:  # the first step of the epoch, as UpdateProbe measures it on a plain trial
                    self._first_step = first_step_norms([c.name for c in self.layout], self.sizes, before, grad,
                                                        st.flat.detach())
                if i != n_batches - 1:
                    before = None
                if before is not None:  # CS231n's health signal: ||update|| / ||w||, ~1e-3
                    ratio = _member_norms(st.flat.detach() - before, self.sizes) / \
                        _member_norms(before, self.sizes).clamp_min(1e-12)
                    update_ratio = torch.where(live, ratio.double(), update_ratio)
                self._update_ema(st)
                n = yb.shape[1]
                correct = (predicted_classes(logits.detach()) == yb).sum(dim=1).double()
                # as TrialRun's python floats: each batch's mean loss times its size, summed in float64
                total_loss = torch.where(live, total_loss + losses.detach().double() * n, total_loss)
                total_correct = torch.where(live, total_correct + correct, total_correct)
                seen = torch.where(live, seen + n, seen)
                grad_norm_sum = torch.where(live, grad_norm_sum + norms.double(), grad_norm_sum)
                steps = torch.where(live, steps + 1, steps)
                blown = live & ~torch.isfinite(total_loss)
                if bool(blown.any()):  # as TrialRun: no point finishing an epoch that has blown up
                    for j in blown.nonzero().flatten().tolist():
                        halts.append((j, st.select([j]), self.members[j].steps, self.members[j].ema_steps))
                    live &= ~blown
                    if not bool(live.any()):
                        break
        for j, saved, member_steps, ema_steps in halts:  # their later steps never happened
            with torch.no_grad():
                for t, v in zip(st.tensors(), saved.tensors()):
                    t[j] = v[0]
            self.members[j].steps, self.members[j].ema_steps = member_steps, ema_steps
        return {
            "train_loss": (total_loss / seen.clamp_min(1)).tolist(),
            "train_accuracy": (total_correct / seen.clamp_min(1)).tolist(),
            "grad_norm": (grad_norm_sum / steps.clamp_min(1)).tolist(),
            "update_ratio": update_ratio.tolist(),
        }

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        k = flat.shape[0]
        pieces = flat.split(self.sizes, dim=1)
        return {c.name: piece.view(k, *c.stored_shape) for c, piece in zip(self.layout, pieces)}

    @property
    def sizes(self) -> list[int]:
        return [c.numel for c in self.layout]

    def _row(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """A plain state's trainable tensors as one flat row."""
        return torch.cat([c.to_row(tensors[c.name].detach()) for c in self.layout])

    def _forward(self, flat: torch.Tensor, buffers: Mapping[str, torch.Tensor], rates: Mapping[str, torch.Tensor],
                 x: torch.Tensor, training: bool) -> torch.Tensor:
        assert self.engine is not None
        return self.engine.forward(self._views(flat), buffers, x, training, rates)

    def _losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's mean loss on its own batch: ``[K]``."""
        if self.loss_fn is None:
            k, b = y.shape
            scores = class_scores(logits).reshape(k * b, -1)
            return F.cross_entropy(scores, y.reshape(-1), reduction="none").view(k, b).mean(1)
        from torch.func import vmap

        if not self._losses_one_by_one:
            try:
                return vmap(self.loss_fn)(logits, y)
            except RuntimeError as exc:
                if "vmap" not in str(exc):
                    raise
                # torch has no batching rule for it (a class-weighted cross-entropy with label smoothing masks its
                # targets): the same losses member by member, rather than no array at all
                self._losses_one_by_one = True
        return torch.stack([self.loss_fn(member_logits, member_y) for member_logits, member_y in zip(logits, y)])

    # -- optimizer and EMA: torch.optim's single-tensor formulas, a column of hyperparameters ----
    @torch.no_grad()
    def _step(self, st: Stack, grad: torch.Tensor, h: _Hyper) -> None:
        kind, param, state = self.kind, st.flat, st.opt
        for m in self.members:
            m.steps += 1
        if kind == "adamw":
            param.mul_(h.col([1 - lr * g["weight_decay"] for lr, g in zip(h.lrs, h.groups)]))
        elif h.any_weight_decay:
            grad = grad.add(param * h.weight_decay)
        if kind in ("sgd", "momentum", "nesterov"):
            if kind != "sgd":
                buf = state["momentum_buffer"]
                buf.mul_(h.momentum).add_(grad)  # a zero buffer makes torch's first step (buf = grad) exactly
                grad = grad.add(buf * h.momentum) if kind == "nesterov" else buf
            param.add_(grad * h.neg_lr)
        elif kind in ("adam", "adamw"):
            beta1 = [g["betas"][0] for g in h.groups]
            beta2 = [g["betas"][1] for g in h.groups]
            state["exp_avg"].lerp_(grad, h.col([1 - b for b in beta1]))
            state["exp_avg_sq"].mul_(h.col(beta2)).addcmul_(grad * h.col([1 - b for b in beta2]), grad)
            steps = [m.steps for m in self.members]
            neg_step_size = [-lr / (1 - b**n) for lr, b, n in zip(h.lrs, beta1, steps)]
            bc2_sqrt = [(1 - b**n) ** 0.5 for b, n in zip(beta2, steps)]
            denom = (state["exp_avg_sq"].sqrt() / h.col(bc2_sqrt)).add_(h.eps)
            param.addcdiv_(state["exp_avg"] * h.col(neg_step_size), denom)
        elif kind == "adagrad":
            state["sum"].addcmul_(grad, grad)
            param.addcdiv_(grad * h.neg_lr, state["sum"].sqrt().add_(h.eps))
        elif kind == "rmsprop":
            alpha = [g["alpha"] for g in h.groups]
            state["square_avg"].mul_(h.col(alpha)).addcmul_(grad * h.col([1 - a for a in alpha]), grad)
            param.addcdiv_(grad * h.neg_lr, state["square_avg"].sqrt().add_(h.eps))
        else:
            raise NotFusable(f"optimizer: {kind!r} has no fused update")

    @torch.no_grad()
    def _update_ema(self, st: Stack) -> None:
        """EmaWeights.update for every member: lerp towards the weights by ``1 - decay_at(step)``."""
        if not any(m.ema_decay for m in self.members):
            return
        weights = [1.0 - ema_decay_at(m.ema_steps, m.ema_decay or 0.5) for m in self.members]
        w = torch.tensor(weights, dtype=st.ema.dtype, device=self.device)
        st.ema.lerp_(st.flat.detach().to(st.ema.dtype), w.unsqueeze(1))
        for k, v in st.ema_buffers.items():
            if v.is_floating_point():
                average_buffer(v, st.buffers[k], w.view(-1, *([1] * (v.dim() - 1))).to(v.dtype))
            else:
                v.copy_(st.buffers[k])
        for m in self.members:
            m.ema_steps += 1

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self, flat: torch.Tensor, buffers: Mapping[str, torch.Tensor], x: torch.Tensor,
                  y: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
        """Per member: the loss, the accuracy and the log loss (the plain path's val_log_loss) on one split."""
        logits = measured_width(self.logits(flat, buffers, x))  # a bfloat16 array: in float32, as the plain path
        self.output_shape = tuple(logits.shape[2:])
        losses = self._losses(logits, y.expand(logits.shape[0], -1))
        acc = (predicted_classes(logits) == y).float().mean(dim=1)
        log_probs = torch.log_softmax(class_scores(logits.float()), dim=-1)
        log_loss = -log_probs.gather(-1, y.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(dim=1)
        return losses.tolist(), acc.tolist(), log_loss.tolist()

    @torch.no_grad()
    def logits(self, flat: torch.Tensor, buffers: Mapping[str, torch.Tensor], x: torch.Tensor,
               batch_size: int | None = None) -> torch.Tensor:
        """Eval-mode outputs of every member on the same inputs: ``[K, N, classes]``."""
        k = flat.shape[0]
        batch_size = batch_size or eval_rows(tuple(x.shape[1:]), copies=k)  # K members: K times one chunk's memory
        chunks = [self._forward(flat.detach(), buffers, {},  # dropout rates: read in training only
                                x[i : i + batch_size].expand(k, -1, *x.shape[1:]), training=False)
                  for i in range(0, len(x), batch_size)]
        return torch.cat(chunks, dim=1)

    # -- one member as a plain model --------------------------------------------------------------
    def state_dict(self, trial_id: int, weights: str = "raw") -> dict[str, torch.Tensor]:
        """The member's weights as the plain model's state dict (loads into ``build_model(config)``)."""
        return {k: v.to("cpu", copy=True).contiguous() for k, v in self._member_state(self.index(trial_id),
                                                                                       weights).items()}

    def _member_state(self, i: int, weights: str = "raw") -> dict[str, torch.Tensor]:
        """Row ``i``'s plain state dict as views on the device (no copy)."""
        assert self.stack is not None
        use_ema = weights == "ema" and self.members[i].ema_decay is not None
        flat = self.stack.ema[i].to(self.stack.flat.dtype) if use_ema else self.stack.flat.detach()[i]
        buffers = self.stack.ema_buffers if use_ema else self.stack.buffers
        params = {c.name: c.from_row(flat) for c in self.layout}
        return {key: params[key] if key in params else buffers[key][i] for key in self.keys}

    def plain_model(self) -> nn.Module:
        """One un-stacked model of the array's structure (weights to be loaded), built once."""
        if self._plain is None:
            with torch.random.fork_rng(devices=[]):  # building must not move the members' random streams
                self._plain = self.task.get("build_model")(dict(self.members[0].spec.config)).to(self.device).eval()
        return self._plain

    def predictions(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Class probabilities on validation and test for a member's stored state (as TrialRun.predictions)."""
        return {split: out for split, (out, _) in self.checkpoint_results(state).items()}

    def checkpoint_results(self, state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, dict[str, float]]]:
        """Per split: natural outputs and metrics of a member's stored state (as TrialRun.checkpoint_results)."""
        model = self.plain_model()
        model.load_state_dict(state)
        s, kind = self.splits, self.splits.target_kind
        loss_fn = loss_function(self.task, kind)
        out = {}
        for split, x, y in (("val", s.x_val, s.y_val), ("test", s.x_test, s.y_test)):
            values, outputs = evaluate_split(self.task, kind, loss_fn, model, x, y, split)
            out[split] = (natural_outputs(kind, outputs).cpu(), values)
        return out

    @torch.no_grad()
    def checkpoint_results_many(self, states: Sequence[Mapping[str, torch.Tensor]]
                                ) -> list[dict[str, tuple[torch.Tensor, dict[str, float]]]]:
        """:meth:`checkpoint_results` of many stored states of this structure, run stacked: one pass per split
        for as many states as the array has members (what training holds in memory), not one model per state.

        The members that end together (a stage's arrays complete at once) have their kept checkpoints run
        this way; outputs equal the plain model's to float rounding (the same layers, batched).
        """
        trainable = {c.name for c in self.layout}
        s, kind = self.splits, self.splits.target_kind
        loss_fn = loss_function(self.task, kind)
        width = max(len(self.members), 1)
        out: list[dict[str, tuple[torch.Tensor, dict[str, float]]]] = [{} for _ in states]
        for start in range(0, len(states), width):
            part = [{k: v.to(self.device) for k, v in state.items()} for state in states[start : start + width]]
            flat = torch.stack([self._row(state) for state in part])
            buffers = {k: torch.stack([state[k] for state in part]) for k in self.keys if k not in trainable}
            for split, x, y in (("val", s.x_val, s.y_val), ("test", s.x_test, s.y_test)):
                for i, outputs in enumerate(self.logits(flat, buffers, x)):
                    values = split_values(self.task, kind, loss_fn, outputs, y, split)
                    out[start + i][split] = (natural_outputs(kind, outputs).cpu(), values)
        return out

    def resume_state(self, trial_id: int) -> dict[str, Any]:
        """The member's training state in TrialRun.resume_state's format: either side can resume it."""
        i = self.index(trial_id)
        m, st = self.members[i], self.stack
        assert st is not None
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        if m.steps > 0 or self.kind == "adagrad":  # torch creates state at the first step (adagrad: at once)
            for j, c in enumerate(self.layout):
                entry = {name: c.from_row(t[i]).to("cpu", copy=True).contiguous() for name, t in st.opt.items()}
                if self.kind in _COUNTS_STEPS:
                    entry["step"] = torch.tensor(float(m.steps))
                if entry:
                    per_param[j] = entry
        group = {**m.optimizer.state_dict()["param_groups"][0], "params": list(range(len(self.layout)))}
        ema = {"step": m.ema_steps, "weights": self.state_dict(trial_id, "ema")} if m.ema_decay else {}
        return {"epoch": m.epoch, "model": self.state_dict(trial_id, "raw"),
                "optimizer": {"state": per_param, "param_groups": [group]}, "scheduler": m.scheduler.state_dict(),
                "ema": ema, "generator": m.generator.get_state(), "torch_rng": torch.get_rng_state()}

    def _load_resume(self, member: Member, state: Mapping[str, Any], new: Stack, row: int) -> None:
        """Continue a member from a resume state (its model weights are already in ``new``)."""
        saved = state["optimizer"]
        member.group.update({k: v for k, v in saved["param_groups"][0].items() if k != "params"})
        member.scheduler.load_state_dict(state["scheduler"])
        member.generator.set_state(state["generator"])
        member.epoch = int(state["epoch"])
        per_param = {int(k): v for k, v in saved["state"].items()}
        with torch.no_grad():
            for j, c in enumerate(self.layout):
                entry = per_param.get(j, {})
                if "step" in entry:
                    member.steps = int(float(entry["step"]))
                for name, t in new.opt.items():
                    if name in entry:
                        t[row, c.offset : c.offset + c.numel] = c.to_row(entry[name]).to(t)
            if state.get("ema") and member.ema_decay:
                member.ema_steps = int(state["ema"]["step"])
                weights = state["ema"]["weights"]
                new.ema[row] = self._row(weights).to(new.ema)
                for k, t in new.ema_buffers.items():
                    t[row] = weights[k].to(t)


@dataclass(frozen=True)
class Column:
    """Where one trainable parameter lives in a member's flat row."""

    name: str
    shape: torch.Size  # as in the plain model
    offset: int
    numel: int
    transposed: bool  # stored as its transpose (the bmm engine's Linear weights)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return (self.shape[1], self.shape[0]) if self.transposed else tuple(self.shape)

    def to_row(self, t: torch.Tensor) -> torch.Tensor:
        return (t.t() if self.transposed else t).reshape(-1)

    def from_row(self, row: torch.Tensor) -> torch.Tensor:
        """This parameter, plain-shaped, out of a whole row."""
        t = row[self.offset : self.offset + self.numel].view(self.stored_shape)
        return t.t() if self.transposed else t


def _member_norms(flat: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """clip_grad_norm_'s total norm per member: the norm of the per-parameter norms."""
    pieces = flat.split(sizes, dim=1)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p, dim=1) for p in pieces], dim=1), dim=1)


class _Hyper:
    """Per-member hyperparameters of one epoch as ``[K, 1]`` columns in the weights' dtype (lr is fixed within an
    epoch); float32 columns against a float64 model's state made Adam's ``lerp_`` raise, and rounded SGD's lr.

    Scalars are computed in Python doubles and cast once, as torch.optim does with its float arguments.
    """

    def __init__(self, members: Sequence[Member], lrs: list[float], device: torch.device,
                 dtype: torch.dtype = torch.float32):
        self.groups = [m.group for m in members]
        self.lrs, self.device, self.dtype = lrs, device, dtype
        self.neg_lr = self.col([-lr for lr in lrs])
        wd = [float(g.get("weight_decay", 0.0)) for g in self.groups]
        self.any_weight_decay = any(wd)
        self.weight_decay = self.col(wd)
        self.momentum = self.col([float(g.get("momentum", 0.0)) for g in self.groups])
        self.eps = self.col([float(g.get("eps", 0.0)) for g in self.groups])

    def col(self, values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=self.dtype, device=self.device).unsqueeze(1)


class FusedMember:
    """One member seen as a trial: what TrialRecorder needs from a TrialRun (duck-typed)."""

    def __init__(self, array: FusedArray, trial_id: int):
        self.array, self.trial_id = array, trial_id

    @property
    def spec(self) -> TrialSpec:
        return self.array.member(self.trial_id).spec

    @property
    def epoch(self) -> int:
        return self.array.member(self.trial_id).epoch

    @property
    def ema(self) -> float | None:
        """Not None when the trial keeps EMA weights (all the recorder asks)."""
        return self.array.member(self.trial_id).ema_decay

    @property
    def diagnostics(self) -> MemberDiagnostics | None:
        return self.array.member(self.trial_id).diagnostics

    @property
    def splits(self) -> Splits:
        return self.array.splits

    @property
    def task(self) -> Task:
        return self.array.task

    @property
    def objective(self) -> str:
        """What the member's score column holds, as a plain trial's ``objective`` says (the dataset row keeps it)."""
        return objective_and_mode(self.array.task, self.splits.target_kind)[0]

    @property
    def mode(self) -> str:
        return objective_and_mode(self.array.task, self.splits.target_kind)[1]

    def weights_state(self, weights: str = "raw") -> dict[str, torch.Tensor]:
        return self.array.state_dict(self.trial_id, weights)

    def predictions(self, state: Mapping[str, torch.Tensor], weights: str = "raw") -> dict[str, torch.Tensor]:
        return self.array.predictions(state)

    def checkpoint_results(self, state: Mapping[str, torch.Tensor], weights: str = "raw",
                           epoch: int | None = None) -> dict[str, tuple[torch.Tensor, dict[str, float]]]:
        return self.array.checkpoint_results(state)

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        return self.array.output_shape

    def resume_state(self) -> dict[str, Any]:
        return self.array.resume_state(self.trial_id)


def contract_blocker(task: Task, kind: TargetKind, streams: Mapping[str, Stream] | None = None) -> str | None:
    """Why fused arrays cannot train this task's contract (see ``orchestrator.spec.task.unfusable_reason``)."""
    if streams:
        return f"the data streams from {stream_sources(streams)}: fused arrays train on data held in memory"
    if kind.multilabel:
        return "multi-label targets: fused arrays train class-index classification only"
    if kind.per_position:
        return "a class per position: fused arrays train one class per example only"
    if not kind.hard_classes:
        return f"{kind.kind} targets ({'soft labels' if kind.soft else kind.kind}): fused arrays train " \
               "class-index classification only"
    return unfusable_reason(task)


def stream_sources(streams: Mapping[str, Stream]) -> str:
    """What the task gives for its streamed splits, as a reason names it: Datasets, loader functions, or both."""
    functions = [name for name, stream in streams.items() if stream.make_loader is not None]
    if not functions:
        return "torch Datasets"
    if len(functions) < len(streams):
        return f"the task's loader functions for {', '.join(functions)} (batch_size -> DataLoader) and torch Datasets"
    return "the task's loader functions (batch_size -> DataLoader)"


__all__ = ["FusedArray", "FusedMember", "Stack", "contract_blocker", "structure_signature"]
