"""Each benchmark script's tiny mode runs end to end and writes its table with the expected columns.

Subprocesses, because the scripts start their own Ray (they must not share the session instance).
No timing is asserted: these only prove the scripts work.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # own Ray or processes end to end: the second CI tier (.ci/test-slow)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # benchmarks/ is a folder of scripts, not an installed package


def run_script(script: str, out: str, *extra: str) -> None:
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--tiny", "--out", out, *extra],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def check_table(out: str, name: str, columns: list[str], tools: set[str], key: str) -> None:
    table = pq.read_table(os.path.join(out, f"{name}.parquet"))
    assert table.column_names == columns
    assert set(table[key].to_pylist()) >= tools
    meta = table.schema.metadata
    assert {b"machine", b"versions", b"date", b"command"} <= set(meta)
    text = open(os.path.join(out, f"{name}.md")).read()
    assert "| " + " | ".join(columns) + " |" in text and "command: python benchmarks/" in text


def test_scale_tiny(tmp_path):
    from benchmarks.scale import COLUMNS

    run_script("scale.py", str(tmp_path))
    table = pq.read_table(tmp_path / "scale-tiny.parquet")
    assert table.column_names == COLUMNS
    cases = table["case"].to_pylist()
    assert any(c.startswith("master") for c in cases) and any("DuckDB" in c for c in cases)


@pytest.mark.timeout(300)
def test_overhead_tiny_caviar_and_reused_tune(tmp_path):
    from benchmarks.overhead import COLUMNS

    run_script("overhead.py", str(tmp_path), "--tools", "caviar,caviar-ray,tune-reuse", "--trials", "2")
    check_table(str(tmp_path), "overhead-tiny", COLUMNS, {"caviar", "caviar-ray", "tune-reuse"}, "tool")


@pytest.mark.timeout(300)
def test_real_sweep_tiny_caviar_and_optuna(tmp_path):
    from benchmarks.real_sweep import COLUMNS

    run_script("real_sweep.py", str(tmp_path), "--tools", "caviar,caviar-warm,optuna", "--trials", "2")
    check_table(str(tmp_path), "real_sweep-tiny", COLUMNS, {"caviar", "caviar-warm", "optuna"}, "tool")


def test_space_converters_cover_the_digits_space():
    pytest.importorskip("optuna")
    pytest.importorskip("ray.tune")
    import optuna

    from benchmarks.real_sweep import decode, suggest_optuna, to_tune
    from orchestrator.spec.task import load_task

    space = load_task(os.path.join(ROOT, "examples", "digits_mlp.py")).space
    assert set(to_tune(space)) == set(space)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    config = suggest_optuna(trial, space)
    assert 0.8 <= config["momentum"] <= 0.999 and 0.99 <= config["beta2"] <= 0.9999
    assert decode({"momentum": 2.0}, space.replace(**{k: 0 for k in space if k != "momentum"}))["momentum"] == \
        pytest.approx(0.99)


def test_ensembles_tiny(tmp_path):
    from benchmarks.ensembles_digits import COLUMNS

    run_script("ensembles_digits.py", str(tmp_path))
    table = pq.read_table(tmp_path / "ensembles_digits-tiny.parquet")
    assert table.column_names == COLUMNS
    methods = set(table["method"].to_pylist())
    assert {"single", "top_k", "seeds", "greedy"} <= methods


@pytest.mark.timeout(300)
def test_quality_tiny_caviar_and_optuna_tpe_both_modes(tmp_path):
    pytest.importorskip("optuna")
    from benchmarks.quality import COLUMNS

    run_script("quality.py", str(tmp_path))
    check_table(str(tmp_path), "quality-tiny", COLUMNS, {"caviar", "optuna-tpe"}, "tool")
    rows = pq.read_table(tmp_path / "quality-tiny.parquet").to_pylist()
    assert {r["mode"] for r in rows} == {"settings", "epochs"}
    for row in rows:
        assert 0.0 <= row["answer_test_accuracy"] <= 1.0 and row["epochs_trained"] >= 1
    text = open(tmp_path / "quality-tiny.md").read()
    assert "same settings: caviar's answer" in text and "same epochs: caviar's best single model" in text


@pytest.mark.timeout(300)
def test_quality_tiny_in_one_process_with_tpe_repeated(tmp_path):
    pytest.importorskip("optuna")
    from benchmarks.quality import COLUMNS

    run_script("quality.py", str(tmp_path), "--in-process", "--modes", "epochs", "--peer-repeats", "2")
    check_table(str(tmp_path), "quality-tiny", COLUMNS, {"caviar", "optuna-tpe"}, "tool")
    rows = pq.read_table(tmp_path / "quality-tiny.parquet").to_pylist()
    tpe = [r for r in rows if (r["tool"], r["mode"], r["seed"]) == ("optuna-tpe", "epochs", "0")]
    assert sorted(r["repeat"] for r in tpe) == [0, 1]
    caviar = next(r for r in rows if (r["tool"], r["seed"]) == ("caviar", "0"))
    assert [r["epochs_trained"] for r in tpe] == [caviar["epochs_trained"]] * 2  # the same epochs, exactly
    text = open(tmp_path / "quality-tiny.md").read()
    assert "every run in one interpreter with one Ray" in text and "same epochs: caviar's best single model" in text
    assert "TPE's runs of a seed: sd" in text


def test_quality_tasks_load_with_their_own_shapes():
    from benchmarks.quality import TASKS
    from orchestrator.search.sampler import sample_configs
    from orchestrator.spec.task import load_task

    for name in ("digits_cnn", "breast_cancer"):
        task = load_task(TASKS[name])
        data = task.get("load_data")()
        x = data["train"][0]
        model = task.get("build_model")(sample_configs(task.space, 1, seed=0)[0])
        import torch

        out = model(torch.as_tensor(x[:5]))
        assert out.shape == (5, len(set(data["train"][1].tolist())))


def test_idle_breakdown_splits_the_slots_idle_time_on_plain_rows():
    from datetime import UTC, datetime

    from benchmarks.common import idle_breakdown

    def at(seconds):
        return datetime.fromtimestamp(1000 + seconds, tz=UTC)

    def epoch(trial, end, seconds):
        return {"trial_id": trial, "attempt": 0, "time": at(end), "epoch_seconds": seconds}

    # slot A: trial 0 started 0, epochs 0.1-1.0 and 1.2-2.0, finished 2.3; trial 1 started 2.5, epoch 2.6-4.0, ended 4.0
    # slot B: trial 2 started 0, epoch 0.0-3.0, finished 3.1, then nothing until the phase ends at 4.0
    trials = [{"trial_id": 0, "attempt": 0, "started": at(0), "finished": at(2.3)},
              {"trial_id": 1, "attempt": 0, "started": at(2.5), "finished": at(4.0)},
              {"trial_id": 2, "attempt": 0, "started": at(0), "finished": at(3.1)},
              {"trial_id": 3, "attempt": 0, "started": at(0), "finished": None}]  # never trained: left out
    metrics = [epoch(0, 1.0, 0.9), epoch(0, 2.0, 0.8), epoch(1, 4.0, 1.4), epoch(2, 3.0, 3.0)]
    idle = idle_breakdown(trials, metrics, slots=2)
    assert idle["idle_trial_starts_s"] == pytest.approx(0.1 + 0.1)
    assert idle["idle_between_epochs_s"] == pytest.approx(0.2)
    assert idle["idle_trial_ends_s"] == pytest.approx(0.3 + 0.1)
    # the phase is 0.0-4.0 on 2 slots (8.0), compute 6.1: 1.9 idle, of which 0.2 + 0.2 + 0.4 inside trials
    assert idle["idle_no_trial_s"] == pytest.approx(1.9 - 0.8)
    assert idle_breakdown(trials, [], slots=2) == {}


def test_quality_summary_and_verdicts_on_plain_rows():
    from benchmarks.quality import summarise, verdicts

    def row(tool, mode, seed, answer, best, epochs, wall):
        return {"task": "t", "mode": mode, "tool": tool, "seed": str(seed), "max_epochs": 10, "trials": 32,
                "epochs_trained": epochs, "wall_s": wall, "answer_test_accuracy": answer, "best_test_accuracy": best}

    rows = [row("caviar", "settings", 0, 0.98, 0.97, 90, 10.0), row("caviar", "settings", 1, 0.96, 0.95, 80, 20.0),
            row("optuna-tpe", "settings", 0, 0.97, 0.97, 120, 5.0),
            row("optuna-tpe", "settings", 1, 0.95, 0.95, 100, 5.0),
            row("optuna-tpe", "epochs", 0, 0.975, 0.975, 90, 4.0), row("optuna-tpe", "epochs", 1, 0.94, 0.94, 80, 4.0)]
    summary = {(s["mode"], s["tool"]): s for s in summarise(rows)}
    caviar = summary["settings", "caviar"]
    assert caviar["answer_test_accuracy"] == pytest.approx(0.97) and caviar["epochs_trained"] == 85
    assert caviar["answer_test_sd"] == pytest.approx(0.0141421, rel=1e-4)
    assert summary["settings", "optuna-tpe"]["wall_ratio"] == pytest.approx((0.5 + 0.25) / 2)
    lines = verdicts(list(summary.values()), rows)
    assert lines[0].startswith("t, same settings: caviar's answer 0.9700 beats every peer (best peer optuna-tpe 0.96")
    # seed by seed: +0.01 and +0.01, so the standard error of the gap is 0
    assert lines[0].endswith("paired by seed: +0.0100 ± 0.0000 (SE), ahead on 2, level on 0, behind on 0 of 2 seeds")
    assert "same epochs: caviar's best single model 0.9600 >= Optuna TPE's 0.9575" in lines[1]
    # best singles 0.97 vs 0.975 and 0.95 vs 0.94: -0.005 and +0.01
    assert lines[1].endswith("paired by seed: +0.0025 ± 0.0075 (SE), ahead on 1, level on 0, behind on 1 of 2 seeds")
    assert "paired" not in verdicts(list(summary.values()))[0]  # without per-seed rows, no gap is claimed

    # TPE run twice on seed 0 (0.975 and 0.955): caviar is paired with their mean 0.965, not with the last run
    rows.append({**rows[4], "best_test_accuracy": 0.955, "repeat": 1})
    summary = {(s["mode"], s["tool"]): s for s in summarise(rows)}
    tpe = summary["epochs", "optuna-tpe"]
    assert tpe["seed"] == "mean of 2 (3 runs)" and tpe["best_test_accuracy"] == pytest.approx((0.965 + 0.94) / 2)
    line = verdicts(list(summary.values()), rows)[1]
    # 0.97 - 0.965 and 0.95 - 0.94 (the last run alone would give +0.015 on seed 0)
    assert "paired by seed: +0.0075 ± 0.0025 (SE), ahead on 2, level on 0, behind on 0 of 2 seeds" in line
    assert line.endswith("TPE's runs of a seed: sd 0.0141 (mean over seeds), differing on 1 of 1 seeds")


@pytest.mark.timeout(300)
def test_startup_tiny_names_every_phase_and_the_second_sweep(tmp_path):
    from benchmarks.startup import COLUMNS

    run_script("startup.py", str(tmp_path), "--tools", "caviar-ray")
    check_table(str(tmp_path), "startup-tiny-ray", COLUMNS, {"master: ray.init", "actor: import torch and caviar",
                                                         "second sweep, same process: call to first epoch's start"},
                "phase")


@pytest.mark.timeout(300)
def test_startup_tiny_with_the_defaults_starts_no_ray(tmp_path):
    import pyarrow.parquet as pq

    from benchmarks.startup import COLUMNS

    run_script("startup.py", str(tmp_path))  # executor "auto": child processes on one machine
    check_table(str(tmp_path), "startup-tiny", COLUMNS,
                {"master: contract check, once (load_data, one build, one batch)",
                 "second sweep, same process: call to first epoch's start"}, "phase")
    phases = pq.read_table(os.path.join(str(tmp_path), "startup-tiny.parquet"))["phase"].to_pylist()
    assert not [p for p in phases if "ray" in p or p.startswith("actor")]


def test_kind_ensembles_tiny(tmp_path):
    from benchmarks.kind_ensembles import COLUMNS

    out = str(tmp_path)
    run_script("kind_ensembles.py", out)
    table = pq.read_table(os.path.join(out, "kind_ensembles.parquet"))
    assert table.column_names == COLUMNS
    assert table["answer"].to_pylist() == ["best single model", "chosen ensemble"]
    assert set(table["objective"].to_pylist()) == {"val_mean_iou"}
