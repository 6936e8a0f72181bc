"""The plain lines the live view and CI logs print for a stage's start say only what the stage does."""

from __future__ import annotations

from orchestrator.app.progress import event_line


def test_a_stage_that_retrains_configs_for_as_many_epochs_is_not_said_to_train_them_longer():
    # --seed-copies 2 after a 2-epoch stage printed "2 of them best configs of stage 1 trained longer": same 2 epochs
    event = {"kind": "stage_started", "stage": 1, "detail": {"trials": 2, "epochs": 2, "promoted": 2}}
    line = event_line(event, stages=2)
    assert line == "stage 2/2 started: 2 trials x 2 epochs, 2 of them best configs of stage 1 trained again", line
    assert "longer" not in line
