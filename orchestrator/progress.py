"""Live progress: a rich panel on a terminal, plain log lines otherwise (CI, pipes, files)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from orchestrator.controller import Controller


def summary(controller: Controller, started: float) -> dict[str, Any]:
    counts = Counter(t.status for t in controller.trials.values())
    best = controller.best()
    epochs = sum(t.epochs_run for t in controller.trials.values())
    elapsed = time.monotonic() - started
    total_epochs = sum(s.trials * s.epochs for s in controller.plan)
    rate = epochs / elapsed if elapsed > 0 else 0.0
    return {
        "stage": f"{controller.stage + 1}/{len(controller.plan)}",
        "running": counts["running"], "pending": counts["pending"], "completed": counts["completed"],
        "pruned": counts["pruned"], "failed": counts["failed"], "epochs": epochs, "elapsed": elapsed,
        "epochs_per_s": rate,
        # An upper bound: pruning only makes the sweep finish sooner.
        "eta_max": (total_epochs - epochs) / rate if rate > 0 else None,
        "best": best,
    }


class Progress:
    def __init__(self, *, interval: float = 5.0, force_plain: bool = False):
        self.started = time.monotonic()
        self.plain = force_plain or not sys.stdout.isatty()
        self.interval = interval
        self.last = 0.0
        self.live: Any = None

    def __enter__(self) -> Progress:
        if not self.plain:
            from rich.live import Live

            self.live = Live(refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def __call__(self, controller: Controller) -> None:
        s = summary(controller, self.started)
        if self.live is not None:
            self.live.update(self._panel(s))
        elif time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            best = s["best"]
            best_text = f"best {best.best_score:.4f} (trial {best.trial_id})" if best else "best -"
            print(f"[{s['elapsed']:6.0f}s] stage {s['stage']} running {s['running']} done {s['completed']} "
                  f"pruned {s['pruned']} failed {s['failed']} pending {s['pending']} {best_text} "
                  f"{s['epochs_per_s']:.1f} epochs/s", flush=True)

    def _panel(self, s: dict[str, Any]) -> Any:
        from rich.panel import Panel
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        table.add_row("stage", s["stage"], "elapsed", f"{s['elapsed']:.0f}s")
        table.add_row("running", str(s["running"]), "pending", str(s["pending"]))
        table.add_row("completed", str(s["completed"]), "pruned", str(s["pruned"]))
        table.add_row("failed", str(s["failed"]), "epochs/s", f"{s['epochs_per_s']:.1f}")
        eta = s["eta_max"]
        table.add_row("time left", f"<= {eta:.0f}s" if eta is not None else "-", "", "")
        best = s["best"]
        if best is not None:
            config = ", ".join(f"{k}={_short(v)}" for k, v in best.config.items())
            table.add_row("best", f"{best.best_score:.4f} (trial {best.trial_id}, stage {best.stage + 1})", "", "")
            table.add_row("config", config, "", "")
        return Panel(table, title="caviar sweep")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
