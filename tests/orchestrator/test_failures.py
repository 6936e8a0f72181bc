"""The failure summary on plain rows: most common errors first, and what to do where the cure is known."""

from __future__ import annotations

from orchestrator.app.failures import error_summary

BATCH_NORM = ("Traceback (most recent call last):\n  File \"/home/me/task.py\", line 9, in build\n"
              "ValueError: Expected more than 1 value per channel when training, got input size torch.Size([1, 32])")


def test_a_known_error_gets_what_to_do_under_its_line():
    trials = [{"trial_id": i, "status": "failed", "error": BATCH_NORM, "reason": "error"} for i in range(3)]
    trials.append({"trial_id": 3, "status": "failed", "error": "RuntimeError: boom", "reason": "error"})
    lines = error_summary(trials)
    assert lines[0] == ("3 failed: ValueError: Expected more than 1 value per channel when training, got input size "
                        "torch.Size([1, 32]) (task.py:9) (trials 0, 1, 2)")
    assert lines[1] == ("  what to do: batch norm met a training batch of one example: give your train loader "
                        "drop_last=True")
    assert lines[2] == "1 failed: RuntimeError: boom (trial 3)"  # no cure known: no advice
    assert lines[3].startswith("(each failed trial's traceback")
