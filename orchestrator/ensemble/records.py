"""One row of the ``ensembles`` table as a value: what the classification and regression builders
write and what ``load_ensemble`` reads back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from orchestrator.ensemble.ensembles import CandidateKey, Member
from orchestrator.store import schema


@dataclass(frozen=True)
class EnsembleRecord:
    """One row of the ``ensembles`` table."""

    ensemble_id: int
    name: str
    method: str
    members: tuple[Member, ...]
    selection_metric: str
    val_accuracy: float
    val_log_loss: float
    test_accuracy: float | None
    test_log_loss: float | None
    chosen: bool = False
    weights_path: str | None = None
    weights_sha256: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    created: int = 0
    val_mse: float | None = None  # regression ensembles, in the targets' original units
    test_mse: float | None = None

    @property
    def size(self) -> int:
        return len(self.members)

    def as_row(self) -> dict[str, Any]:
        return {
            "ensemble_id": self.ensemble_id, "name": self.name, "method": self.method,
            "members": [{"trial_id": m.key.trial_id, "epoch": m.key.epoch, "weights": m.key.weights,
                         "weight": m.weight} for m in self.members],
            "size": self.size, "selection_metric": self.selection_metric,
            "val_accuracy": self.val_accuracy, "val_log_loss": self.val_log_loss,
            "test_accuracy": self.test_accuracy, "test_log_loss": self.test_log_loss, "chosen": self.chosen,
            "weights_path": self.weights_path, "weights_sha256": self.weights_sha256,
            "detail": schema.json_dumps(self.detail), "created": self.created,
            "val_mse": self.val_mse, "test_mse": self.test_mse,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EnsembleRecord:
        members = tuple(Member(CandidateKey(m["trial_id"], m["epoch"], m["weights"]), m["weight"])
                        for m in row["members"])
        return cls(row["ensemble_id"], row["name"], row["method"], members, row["selection_metric"],
                   row["val_accuracy"], row["val_log_loss"], row["test_accuracy"], row["test_log_loss"],
                   bool(row["chosen"]), row["weights_path"], row["weights_sha256"], json.loads(row["detail"] or "{}"),
                   _ms(row["created"]), row.get("val_mse"), row.get("test_mse"))


def _ms(value: Any) -> int:
    """A timestamp read back from Parquet (datetime) as epoch milliseconds, as written."""
    return round(value.timestamp() * 1000) if hasattr(value, "timestamp") else int(value or 0)
