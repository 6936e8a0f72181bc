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


def test_errors_that_differ_only_in_a_drawn_value_are_one_group():
    def drawn(value: float) -> str:
        return ("Traceback (most recent call last):\n  File \"/home/me/task.py\", line 21, in build_model\n"
                f"ValueError: dropout probability has to be between 0 and 1, but got {value}")
    trials = [{"trial_id": i, "status": "failed", "error": drawn(v), "reason": "error"}
              for i, v in ((9, -0.2294), (8, -0.1245), (10, -0.2063), (12, 1.5e-3))]
    trials.append({"trial_id": 11, "status": "failed", "error": "RuntimeError: boom", "reason": "error"})
    lines = error_summary(trials)
    assert lines[0] == ("4 failed: ValueError: dropout probability has to be between 0 and 1, but got -0.1245 "
                        "(task.py:21) (trials 8, 9, 10, 12; the numbers in the error differ between them)")
    assert lines[1] == "1 failed: RuntimeError: boom (trial 11)"
