"""The HTML report of a real (tiny) sweep: every plot present, PNG export, and a look in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from orchestrator.app.api import run_sweep
from orchestrator.app.cli import app
from orchestrator.app.report import build_report, write_report
from orchestrator.app.report_figures import axis_value, stage_range
from orchestrator.search.space import one_minus_loguniform
from orchestrator.store import schema
from orchestrator.store.storage import Storage
from tests.conftest import DIGITS_TASK, TINY_TASK

PLOTS = {"fig-hyperparameters", "fig-importance", "fig-learning-curves", "fig-gap", "fig-update-ratio",
         "fig-activations"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("runs"))
    return run_sweep(TINY_TASK, plan="8x1,4x3", slots=2, storage=storage, name="tiny-report", seed=3,
                     pruner="asha", ensemble=False)


@pytest.fixture(scope="module")
def built(sweep):
    return build_report(sweep.path)


def test_every_plot_is_embedded_and_exported(built, tmp_path):
    assert {f.id for f in built.figures} == PLOTS
    assert built.skipped == {"fig-ensembles": "no ensembles table"}
    page = built.html
    images = re.findall(r"<img id='img-(fig-[a-z-]+)'[^>]*src='data:image/png;base64,", page)
    assert sorted(images) == sorted(PLOTS)
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    paths = write_report(built, str(tmp_path / "out" / "report.html"), str(tmp_path / "png"))
    assert (tmp_path / "out" / "report.html").read_text() == page
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == sorted(f"{p.removeprefix('fig-')}.png" for p in PLOTS) and len(paths) == 1 + len(PLOTS)
    assert all((tmp_path / "png" / name).read_bytes().startswith(PNG_MAGIC) for name in pngs)


def test_the_ensembles_table_is_drawn_when_present(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep.path, copy)
    # The columns of the ensembles table (orchestrator.store.schema.ENSEMBLES) the plot reads.
    table = pa.table({"name": ["single", "top_3", "greedy", "ema_5"], "method": ["single", "top_k", "greedy", "ema"],
                      "size": pa.array([1, 3, 4, 5], pa.int32()), "chosen": [False, False, True, False],
                      "val_accuracy": [0.91, 0.93, 0.94, 0.92], "val_log_loss": [0.31, 0.26, 0.21, 0.28],
                      "test_accuracy": [0.90, 0.92, 0.93, 0.91], "test_log_loss": [0.30, 0.25, 0.22, None]})
    Storage.from_uri(str(copy)).write_table("ensembles/ensembles.parquet", table)
    report = build_report(str(copy))
    assert "fig-ensembles" in {f.id for f in report.figures} and "fig-ensembles" not in report.skipped


def test_a_regression_sweeps_ensembles_are_drawn_on_their_mse(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep.path, copy)
    # A regression's rows: no accuracy or log loss, MSE in the targets' units (was: "no ensembles table").
    table = pa.table({"name": ["single", "top_k", "greedy"], "method": ["single", "top_k", "greedy"],
                      "size": pa.array([1, 3, 4], pa.int32()), "chosen": [False, False, True],
                      "val_accuracy": pa.array([None] * 3, pa.float64()),
                      "val_log_loss": pa.array([None] * 3, pa.float64()),
                      "val_mse": [5.6e-08, 6.1e-08, 4.8e-08], "test_mse": [2.9e-08, 3.5e-08, 3.4e-08]})
    Storage.from_uri(str(copy)).write_table("ensembles/ensembles.parquet", table)
    report = build_report(str(copy))
    assert "fig-ensembles" in {f.id for f in report.figures} and "fig-ensembles" not in report.skipped


def test_betas_are_drawn_on_a_one_minus_beta_axis():
    beta = one_minus_loguniform(0.9, 0.999)
    assert axis_value(beta, 0.99) == pytest.approx(0.01)
    assert stage_range({"dist": "one_minus_loguniform", "low": 0.9, "high": 0.999}) == pytest.approx((0.001, 0.1))
    assert stage_range({"dist": "choice", "options": [1, 2]}) is None


def test_the_cli_writes_the_page_and_pngs(sweep, tmp_path):
    result = CliRunner().invoke(app, ["report", sweep.path, "--out", str(tmp_path / "r.html"),
                                      "--png-dir", str(tmp_path / "png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").stat().st_size > 10_000 and len(list((tmp_path / "png").iterdir())) == len(PLOTS)
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code != 0


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no file can be made")
def test_an_out_or_png_dir_that_cannot_be_written_is_one_line_naming_the_option(built, tmp_path):
    """``caviar report NAME --out /proc/x`` printed pyarrow's traceback, naming its temporary file."""
    from orchestrator.errors import StorageError

    with pytest.raises(StorageError, match=r"^--out /proc/x\.html: the report cannot be written there \(No such file"):
        write_report(built, "/proc/x.html")
    with pytest.raises(StorageError, match=r"^--png-dir /proc/pngs: .* the report itself is at .*r\.html; give a"):
        write_report(built, str(tmp_path / "r.html"), "/proc/pngs")
    assert (tmp_path / "r.html").stat().st_size > 10_000  # the page was written before the plots failed


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)")
def test_headless_chromium_loads_every_plot(built, tmp_path):
    # The page plus a probe script: once loaded, it records how many images decoded in the browser.
    probe = ("<script>addEventListener('load',()=>{const i=[...document.images];document.body.dataset.loaded="
             "i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length})</script></body>")
    page = tmp_path / "report.html"
    page.write_text(built.html.replace("</body>", probe))
    base = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert f'data-loaded="{len(PLOTS)}/{len(PLOTS)}"' in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run([*base, "--window-size=1280,3000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 3000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 500  # plots, not a blank or error page
        white = max(count for count, rgb in colours if rgb == (255, 255, 255))
        assert white < 0.9 * 1280 * 3000


def test_a_digits_sweep_stores_inactive_hyperparameters_as_null_and_reports(ray_session, tmp_path):
    """examples/digits_mlp.py declares each optimizer's own hyperparameters conditional on the optimizer."""
    result = run_sweep(DIGITS_TASK, plan="8x1,4x2", slots=2, storage=str(tmp_path / "runs"), name="digits-cond",
                       seed=5, ensemble=False)
    sweep = Storage.from_uri(result.path)
    trials = sweep.read_table(schema.TRIALS_PATH).to_pylist()
    assert len(trials) == 12
    users = {"momentum": {"momentum", "nesterov"}, "beta1": {"adam", "adamw"}, "beta2": {"adam", "adamw"},
             "eps": {"adagrad", "rmsprop", "adam", "adamw"}, "rho": {"rmsprop"}}
    for t in trials:
        for name, optimizers in users.items():
            assert (t["config"][name] is not None) == (t["config"]["optimizer"] in optimizers), (name, t["config"])
    assert any(t["config"]["momentum"] is None for t in trials)
    stored = json.loads(sweep.read_table(schema.stage_path(1)).to_pylist()[0]["space"])
    assert stored["momentum"]["when"]["optimizer"] <= ["momentum", "nesterov"]
    out = CliRunner().invoke(app, ["report", result.path, "--out", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    assert "fig-hyperparameters" in (tmp_path / "r.html").read_text()


def test_plots_drawn_in_forked_processes_make_the_same_page(sweep):
    """A process without Ray draws the plots in forked children (one per CPU): the page is the same, byte for byte.

    In a subprocess: this test session has joined Ray, where the report draws in-process.
    """
    import sys

    from tests.conftest import ROOT

    code = ("import sys; import orchestrator.app.report as r; from concurrent.futures import ProcessPoolExecutor as P\n"
            "forks = []\n"
            "class Counted(P):\n"
            "    def __init__(self, *a, **k): forks.append(a[0]); super().__init__(*a, **k)\n"
            "r.ProcessPoolExecutor = Counted\n"
            f"alone = r.build_report({sweep.path!r}, workers=1).html\n"
            f"shared = r.build_report({sweep.path!r}, workers=2).html\n"
            "print(alone == shared, forks, 'ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "[2]", "False"]  # one pool of two, and the same bytes as one process


HELPER_CODE = """
import os, sys, time
from orchestrator.app.cli_common import write_sweep_report
from orchestrator.app.report import build_report
from orchestrator.app.report_helper import ReportHelper
sweep, case = sys.argv[1], sys.argv[2]
helper = ReportHelper.start()
assert helper is not None and "torch" not in sys.modules
if case == "draws":
    asked, answer = helper.ask(sweep), helper.answer()
    page = open(os.path.join(sweep, "report.html")).read()
    helper.close()
    print(asked, answer)
    print(helper._process.exitcode, page == build_report(sweep).html)
elif case == "dead":
    helper._process.kill(); helper._process.join()
    asked = helper.ask(sweep)
    print(asked, write_sweep_report(sweep, None, helper if asked else None))
elif case == "not-a-sweep":
    print(helper.ask(sweep), helper.answer()[0])
elif case == "orphaned":
    print(helper._process.pid, flush=True)
    os._exit(0)  # the master dies without a word: no close, no atexit
"""


def _helper(sweep_path: str, case: str) -> list[str]:
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-c", HELPER_CODE, sweep_path, case], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split("\n")


def test_a_helper_forked_before_the_run_writes_the_page_the_master_would(sweep, tmp_path):
    """`caviar run` forks a report helper before torch and Ray (orchestrator/app/report_helper.py). In a subprocess:
    this test session joined Ray, where no helper starts."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep.path, copy)
    asked, ended = _helper(str(copy), "draws")[:2]
    assert asked == f"True ('written', '{copy}/report.html')"
    assert ended == "0 True"  # the helper exited by itself; its page has the bytes drawn in-process


def test_when_the_helper_is_gone_the_master_draws_and_a_failed_report_is_one_warning(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep.path, copy)
    assert _helper(str(copy), "dead")[0] == f"False {copy}/report.html"
    assert (copy / "report.html").stat().st_size > 1000
    assert _helper(str(tmp_path / "nothing-here"), "not-a-sweep")[0] == "True failed"


def test_a_helper_whose_master_died_exits(sweep, tmp_path):
    import time

    pid = int(_helper(str(tmp_path), "orphaned")[0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z":
            return  # exited; only its (dead) parent could reap it
        time.sleep(0.2)
    raise AssertionError(f"report helper {pid} still alive a minute after its master died")


def test_a_sweep_whose_every_trial_diverged_reports(tmp_path):
    # every training loss inf or NaN: the log-scaled training-loss panel had nothing to draw and matplotlib raised
    # "Data cannot be log-scaled", a traceback from caviar report and "report not written" at the end of the run
    config = tmp_path / "huge.toml"
    config.write_text('[space]\nlr = 1e6\noptimizer = "sgd"\n')
    result = run_sweep(TINY_TASK, config_file=str(config), trials=2, epochs=2, stages=1, slots=1,
                       storage=str(tmp_path), name="huge", ensemble=False, executor="processes")
    trials = Storage.from_uri(result.path).read_table(schema.TRIALS_PATH).to_pylist()
    assert {t["reason"] for t in trials} == {"diverged"}
    built = build_report(result.path)
    assert "fig-learning-curves" in {f.id for f in built.figures}


def test_a_sweep_ranked_by_its_own_metric_reports_that_metric(tmp_path):
    # ranked by a ROC AUC: the report's best line, top table, hyperparameter plots and learning curves showed the
    # validation loss beside trials ordered by AUC (a loss column out of order, the star off the lowest dot)
    from orchestrator.app.report_data import read_sweep

    task = os.path.join(os.path.dirname(TINY_TASK), "imbalanced_auc_task.py")
    result = run_sweep(task, trials=2, epochs=2, stages=1, slots=1, storage=str(tmp_path), name="auc",
                       ensemble=False, executor="processes", pruner="none")
    data = read_sweep(result.path)
    metrics = data.tables.to_pandas("metrics")
    auc = {t: float(rows["metrics"].map(lambda m: dict(m)["val_auc"]).max()) for t, rows in metrics.groupby("trial_id")}
    assert data.metric_name == "val_auc"
    assert {t["trial_id"]: data.value(t) for t in data.trials} == pytest.approx(auc)
    assert [data.epoch_value(r) for r in data.curves[0]] == pytest.approx(
        [dict(r["metrics"])["val_auc"] for r in data.curves[0]])
    page = build_report(result.path).html
    best = max(auc.values())
    assert re.search(rf"val_auc <b>{best:.4g}</b>", page) and "<th>val_auc</th>" in page


def test_ensembles_chosen_by_the_sweeps_own_metric_are_drawn_on_it(tmp_path):
    # the ensembles figure drew accuracy and log loss only: the ROC AUC that chose the starred row was nowhere in it
    from orchestrator.app.report_data import read_sweep
    from orchestrator.app.report_figures import plot_ensembles

    task = os.path.join(os.path.dirname(TINY_TASK), "imbalanced_auc_task.py")
    result = run_sweep(task, trials=2, epochs=2, stages=1, slots=1, storage=str(tmp_path), name="auc",
                       executor="processes", pruner="none")
    data = read_sweep(result.path)
    assert {json.loads(r["detail"])["chosen_by"] for r in data.ensembles.to_pylist()} == {"val_auc"}
    figure = plot_ensembles(data)
    assert figure is not None and "chosen on validation auc (the sweep's objective, higher is better)" in figure.caption


def test_training_losses_at_or_below_zero_are_drawn_on_a_linear_axis(tmp_path):
    # a Gaussian negative log-likelihood goes below 0: the log-scaled training-loss panel dropped every such epoch
    # without a word (2 points of 16 left, on an axis from 0.945 to 1.05)
    from orchestrator.app.report_data import read_sweep
    from orchestrator.app.report_figures import plot_learning_curves

    task = os.path.join(os.path.dirname(TINY_TASK), "gaussian_nll_task.py")
    result = run_sweep(task, trials=2, epochs=4, stages=1, slots=1, storage=str(tmp_path), name="nll",
                       executor="processes", pruner="none", seed=0)
    data = read_sweep(result.path)
    losses = [r["train_loss"] for rows in data.curves.values() for r in rows]
    assert len(losses) == 8 and min(losses) < 0
    figure = plot_learning_curves(data)
    assert figure is not None and "Training losses on a linear axis: some are at or below 0" in figure.caption
    tiny = run_sweep(TINY_TASK, trials=2, epochs=1, stages=1, slots=1, storage=str(tmp_path), name="tiny",
                     ensemble=False, executor="processes")
    figure = plot_learning_curves(read_sweep(tiny.path))
    assert figure is not None and "linear axis" not in figure.caption  # positive losses keep their log axis


def test_failed_trials_are_listed_among_the_warnings(tmp_path):
    # the run's closing lines said "3 failed: RuntimeError: ..." but the report's warnings had nothing on them, or
    # said "None: ... the diagnostics look healthy" for a sweep whose trials crashed
    from orchestrator.app.report_data import read_sweep

    task = os.path.join(os.path.dirname(TINY_TASK), "second_epoch_failure_task.py")
    result = run_sweep(task, trials=6, epochs=2, stages=1, slots=1, storage=str(tmp_path), name="fails",
                       ensemble=False, executor="processes", pruner="none", seed=1)
    trials = read_sweep(result.path).trials
    failed = sorted(t["trial_id"] for t in trials if t["status"] == "failed")
    assert failed and len(failed) < len(trials)
    assert all(t["config"]["hidden"] >= 8 for t in trials if t["trial_id"] in failed)
    built = build_report(result.path)
    ids = ", ".join(map(str, failed))
    with open(task) as f:
        raised = next(i for i, text in enumerate(f, 1) if "raise RuntimeError" in text)
    line = (f"{len(failed)} failed: RuntimeError: wide model gave up in epoch 2 "
            f"(second_epoch_failure_task.py:{raised}) (trial{'s' if len(failed) > 1 else ''} {ids}) "
            "(each failed trial's traceback: the 'error' column of trials/trials.parquet)")
    assert line in built.warnings
    assert html.escape(line) in built.html


def test_trials_without_a_finite_value_are_counted_in_the_legend(tmp_path):
    # trials that diverged in their first epoch (every value NaN or inf) were left out of the curves and out of the
    # legend's counts: a sweep with 5 of 10 trials diverged showed "pruned: not_learning (3)" and nothing else
    from orchestrator.app.report_data import read_sweep
    from orchestrator.app.report_figures import _lines, new_figure

    config = tmp_path / "huge.toml"
    config.write_text('[space]\nlr = 1e6\noptimizer = "sgd"\n')
    result = run_sweep(TINY_TASK, config_file=str(config), trials=2, epochs=2, stages=1, slots=1,
                       storage=str(tmp_path), name="huge", ensemble=False, executor="processes")
    data = read_sweep(result.path)
    assert [t["reason"] for t in data.trials] == ["diverged", "diverged"]
    reasons = _lines(new_figure(4, 3).subplots(), data, lambda r: r["val_loss"])
    assert reasons == {"pruned: diverged, not drawn (no finite value)": 2}


def test_a_one_epoch_sweeps_curves_tick_whole_epochs(sweep):
    # every trial of one epoch: matplotlib's integer locator fell back to ticks at 0.945, 0.96, ... 1.05, epochs that
    # do not exist
    from orchestrator.app.report_data import read_sweep
    from orchestrator.app.report_figures import _lines, new_figure

    data = read_sweep(sweep.path)
    data.curves = {t: rows[:1] for t, rows in data.curves.items()}
    ax = new_figure(4, 3).subplots()
    _lines(ax, data, data.epoch_value)
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks == [1.0]


def test_a_running_sweeps_unfinished_trials_are_not_called_pruned(sweep):
    # a report drawn while the sweep ran: running trials were grey under a caption saying "grey: pruned", and the
    # curves' legend named them "running: ?"
    from orchestrator.app.report_data import read_sweep
    from orchestrator.app.report_figures import _lines, new_figure, plot_hyperparameters

    data = read_sweep(sweep.path)
    running = data.trials[0]
    running.update(status="running", reason=None)
    reasons = _lines(new_figure(4, 3).subplots(), data, data.epoch_value)
    assert reasons["running"] == 1 and not any("?" in r for r in reasons)
    assert "grey: not completed: pruned, failed, or still running" in plot_hyperparameters(data).caption
