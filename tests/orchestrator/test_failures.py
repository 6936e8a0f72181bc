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


POOL = ("Traceback (most recent call last):\n  File \"/home/me/task.py\", line 34, in forward\n"
        "RuntimeError: Given input size: (4x1x1). Calculated output size: (4x0x0). Output size is too small")
DECLARED = {"optimizer": "adam", "lr": {"dist": "loguniform", "low": 0.001, "high": 0.03},
            "blocks": {"dist": "randint", "low": 1, "high": 3, "limits": [1, None]},
            "act": {"dist": "choice", "options": ["relu", "tanh"]}}


def rows(*trials):
    return [{"trial_id": i, "status": status, "error": POOL if status == "failed" else None, "reason": "error",
             "config": {"optimizer": "adam", "lr": 0.01, "blocks": blocks, "act": "relu"}}
            for i, (status, blocks) in enumerate(trials)]


def test_failures_of_values_a_later_stage_extended_past_the_declared_range_say_so():
    # randint(1, 3) pooling blocks on 8x8 images, extended to [1, 5] after stage 1's best sat at 3: the trials drawing
    # 4 and 5 failed with torch's 'Output size is too small', and nothing tied that to the range moving past its edge
    trials = rows(("completed", 3), ("completed", 1), ("failed", 4), ("failed", 5), ("pruned", 2), ("failed", 4))
    lines = error_summary(trials, declared=DECLARED)
    assert lines[0].startswith("3 failed: RuntimeError: Given input size") and lines[0].endswith("(trials 2, 3, 5)")
    assert lines[1] == ("  what to do: these trials drew blocks = 4, 5 (declared [1, 3]), past the declared range, "
                        "which a later stage extended from an edge: if the model cannot take such values, give "
                        "limits=(1, 3) to blocks in the task, or set extend_edges = false")
    assert len(error_summary(trials)) == 2  # without the declared space: as before


def test_no_extension_advice_where_trained_trials_went_as_far_or_failures_sit_inside():
    went_as_far = rows(("completed", 5), ("failed", 4), ("failed", 5))  # a trial trained at 5: not the range
    inside = rows(("completed", 1), ("failed", 3), ("failed", 2))
    mixed = rows(("completed", 1), ("failed", 4), ("failed", 2))
    for trials in (went_as_far, inside, mixed):
        assert not any("what to do" in line for line in error_summary(trials, declared=DECLARED))


def test_a_message_of_several_lines_is_summarised_by_its_first_line_not_its_last():
    """torch's dispatcher errors list every backend after their message: the summary (and the fail-fast line, which
    reads the same line) showed "PythonDispatcher: registered at ...PythonFallbackKernel.cpp:196 [backend fallback]"."""
    from orchestrator.errors import exception_line

    sparse = ("Traceback (most recent call last):\n  File \"/home/me/task.py\", line 30, in forward\n"
              "    return self.head(self.bag(x))\n           ^^^^^^^^^^^^^^^^^^\n"
              "NotImplementedError: Could not run 'aten::linalg_vector_norm' with arguments from the 'SparseCPU' "
              "backend.\n\nCPU: registered at aten/src/ATen/RegisterCPU.cpp:30476 [kernel]\n"
              "PythonDispatcher: registered at aten/src/ATen/core/PythonFallbackKernel.cpp:196 [backend fallback]\n")
    lines = error_summary([{"trial_id": 0, "status": "failed", "error": sparse, "reason": "error"}])
    assert lines[0] == ("1 failed: NotImplementedError: Could not run 'aten::linalg_vector_norm' with arguments from "
                        "the 'SparseCPU' backend. (task.py:30) (trial 0)")
    chained = f"{BATCH_NORM}\n\nThe above exception was the direct cause of the following exception:\n\n" \
              "Traceback (most recent call last):\n  File \"/x/worker.py\", line 3, in run\nTaskError: the trial broke"
    assert exception_line(chained) == "TaskError: the trial broke"
    assert exception_line("RuntimeError: boom") == "RuntimeError: boom" and exception_line("") == ""
