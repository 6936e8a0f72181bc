"""Bad input through the real ``caviar`` command: one error line naming the field or file, exit 2, storage untouched.

Every case runs ``caviar`` in its own process against its own storage folder (a copy of one real
finished sweep), snapshotted (paths and sha256) before and after. The cases start no Ray and most
import no torch (they use a task file that imports neither), so they run a few at a time, at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.app.api import run_sweep
from orchestrator.errors import StorageError
from tests.cluster.raycluster import free_port
from tests.conftest import TINY_TASK

CAVIAR = os.path.join(os.path.dirname(sys.executable), "caviar")

LIGHT_TASK = '''"""A task importing neither torch nor Ray: refused commands must fail before either is needed."""
from orchestrator.search.space import loguniform, randint

space = {"lr": loguniform(1e-2, 3e-1), "hidden": randint(4, 16)}


def load_data():
    raise AssertionError("a refused command never loads data")


def build_model(config):
    raise AssertionError("a refused command never builds a model")
'''
NO_MODEL_TASK = 'space = {"lr": 0.1}\n\n\ndef load_data():\n    pass\n'
CONFIGS = {
    "low_above_high.toml": '[space]\nlr = { dist = "uniform", low = 1.0, high = 0.1 }\n',
    "log_from_zero.toml": '[space]\nlr = { dist = "loguniform", low = 0.0, high = 0.1 }\n',
    "unknown_parameter.toml": '[space]\ndepth = { dist = "randint", low = 1, high = 4 }\n',
    "not_a_number.toml": '[space]\nlr = { dist = "loguniform", low = "small", high = 0.1 }\n',
    "bad_setting.toml": '[run]\ntrials = "many"\n',
}


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate_trials(sweep: Path) -> None:
    path = sweep / "trials" / "trials.parquet"
    path.write_bytes(path.read_bytes()[:100])


def garble_sweep_row(sweep: Path) -> None:
    (sweep / "sweep" / "sweep.parquet").write_bytes(b"not parquet\n")


def flip_a_metrics_page(sweep: Path) -> None:
    """One bit-rotted byte inside a data page, footer intact: the page checksum must catch it."""
    path = sweep / "metrics" / "trial-000000.parquet"
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    flip_byte(path, start + chunk.total_compressed_size - 1)  # the chunk's last byte: page data, not a header


def point_the_index_outside(sweep: Path) -> None:
    """A tampered checkpoint index: every row's weights path leaves the sweep folder."""
    for path in (sweep / "checkpoints").glob("*.parquet"):
        index = pq.read_table(path)
        outside = pa.array(["../../outside.safetensors"] * index.num_rows)
        pq.write_table(index.set_column(index.schema.get_field_index("path"), "path", outside), path)


def flip_every_weights_file(sweep: Path) -> None:
    for path in sweep.rglob("*.safetensors"):
        flip_byte(path, path.stat().st_size - 1)


def delete_trials_table(sweep: Path) -> None:
    (sweep / "trials" / "trials.parquet").unlink()


def weights_that_are_not_safetensors(sweep: Path) -> None:
    """Every weights file replaced by other bytes, the index's sha256 patched to match: only the format is wrong."""
    fake = b"\xff" * 64
    for path in (sweep / "checkpoints").glob("*.parquet"):
        index = pq.read_table(path)
        for rel in index["path"].to_pylist():
            (sweep / rel).write_bytes(fake)
        digest = pa.array([hashlib.sha256(fake).hexdigest()] * index.num_rows)
        pq.write_table(index.set_column(index.schema.get_field_index("sha256"), "sha256", digest), path)


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # placeholders: {runs} storage, {sweep} the finished sweep in it, {work} cwd, {port}
    error: str  # the whole stderr line, same placeholders; "…" stands for any text (a temp name, an SDK's detail)
    corrupt: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    only_unprivileged: bool = False  # root ignores file permissions


RUN = ("run", "{work}/light_task.py", "--storage", "{runs}")
E = "caviar: error: "
CASES = [
    # search spaces (TOML [space] overrides)
    Case(
        "space_low_above_high",
        (*RUN, "--config", "{work}/low_above_high.toml"),
        E + "config '{work}/low_above_high.toml': [space] parameter 'lr': low (1.0) must be below high (0.1)",
    ),
    Case(
        "space_loguniform_from_zero",
        (*RUN, "--config", "{work}/log_from_zero.toml"),
        E + "config '{work}/log_from_zero.toml': [space] parameter 'lr': log range must be positive, got [0.0, 0.1]",
    ),
    Case(
        "space_unknown_parameter",
        (*RUN, "--config", "{work}/unknown_parameter.toml"),
        E + "config '{work}/unknown_parameter.toml': [space] parameter 'depth': not in the search space (known: lr, "
        "hidden)",
    ),
    Case(
        "space_bound_not_a_number",
        (*RUN, "--config", "{work}/not_a_number.toml"),
        E + "config '{work}/not_a_number.toml': [space] parameter 'lr': bounds must be numbers, got low = 'small'",
    ),
    Case(
        "config_bad_setting",
        (*RUN, "--config", "{work}/bad_setting.toml"),
        E + "setting 'trials': expected a positive integer",
    ),
    Case(
        "config_no_such_file", (*RUN, "--config", "{work}/nosuch.toml"), E + "config '{work}/nosuch.toml': no such file"
    ),
    # tasks
    Case(
        "task_no_such_file",
        ("run", "{work}/nosuch.py", "--storage", "{runs}"),
        E + "task '{work}/nosuch.py': no such file",
    ),
    Case(
        "task_unknown_module",
        ("run", "nosuch_module:task", "--storage", "{runs}"),
        E + "task 'nosuch_module:task': cannot import module 'nosuch_module' (No module named 'nosuch_module')",
    ),
    Case(
        "task_unknown_attribute",
        ("run", "light_task:nosuch", "--storage", "{runs}"),
        E + "task 'light_task:nosuch': 'light_task' has no attribute 'nosuch'",
    ),
    Case(
        "task_without_build_model",
        ("run", "{work}/no_model_task.py", "--storage", "{runs}"),
        E + "task '{work}/no_model_task.py': missing required build_model (a task needs space, load_data, build_model)",
    ),
    # CLI values
    Case("cli_zero_trials", (*RUN, "--trials", "0"), E + "setting 'trials': expected a positive integer"),
    Case(
        "cli_trials_not_a_number",
        (*RUN, "--trials", "many"),
        E + "Invalid value for '--trials': Input should be a valid integer, unable to parse string as an integer "
        "(see 'caviar run --help')",
    ),
    Case(
        "cli_unknown_pruner", (*RUN, "--pruner", "nosuch"), E + "setting 'pruner': expected one of asha, median, none"
    ),
    Case(
        "cli_unknown_stage_policy",
        (*RUN, "--stage-policy", "nosuch"),
        E + "setting 'stage_policy': expected one of narrow_and_promote, fresh",
    ),
    Case(
        "cli_plan_garbage",
        (*RUN, "--plan", "garbage"),
        E + "plan: stage 1 'garbage' is not TRIALSxEPOCHS (like '64x1,24x5,8x20')",
    ),
    Case(
        "cli_resource_without_amount",
        (*RUN, "--resource", "accelerator_type_a100"),
        E + "setting 'resources': expected NAME=AMOUNT, got 'accelerator_type_a100'",
    ),
    Case(
        "cli_resource_negative",
        (*RUN, "--resource", "accelerator_type_a100=-1"),
        E + "setting 'resources.accelerator_type_a100': expected a number > 0",
    ),
    # storage and names
    Case(
        "storage_unreachable_s3",
        (
            "run",
            "{work}/light_task.py",
            "--storage",
            "s3://key:secret@bucket/sweeps?endpoint_override=127.0.0.1:{port}&scheme=http",
        ),
        E + "storage 's3://key:***@bucket/sweeps?endpoint_override=127.0.0.1:{port}&scheme=http' is not writable: "
        "writing bucket/sweeps/.caviar-probe-…: …Could not connect to server…",
        env={"CAVIAR_IO_ATTEMPTS": "1"},
    ),
    Case(  # one slash: it would be a local folder named after the URI, its secret in the name
        "storage_uri_with_one_slash",
        ("run", "{work}/light_task.py", "--storage", "s3:/key:secret@bucket/sweeps?endpoint_override=127.0.0.1:9"),
        E + "storage s3:/...: a URI takes two slashes after its scheme, as in "
        "'s3://key:***@bucket/sweeps?endpoint_override=127.0.0.1:9'; a local folder is a plain path",
    ),
    Case(  # an SDK's own text repeats the URI it was given: the whole line is masked
        "storage_unknown_scheme",
        ("ls", "s4://key:secret@bucket/sweeps"),
        E + "storage 's4://key:***@bucket/sweeps': Unrecognized filesystem type in URI: s4://key:***@bucket/sweeps",
    ),
    Case(
        "status_of_a_uri_with_a_password",
        ("status", "file://key:secret@{work}/nosweep"),
        E + "storage 'file://key:***@{work}/nosweep': …password in local URI: 'file://key:***@{work}/nosweep'",
    ),
    Case(
        "storage_under_a_file",
        ("run", "{work}/light_task.py", "--storage", "{work}/a_file/runs"),
        E + "storage '{work}/a_file/runs' is not writable: writing {work}/a_file/runs/.caviar-probe-…: "
        "[Errno 20] …Not a directory",
    ),
    Case(
        "storage_read_only",
        (*RUN, "--name", "new"),
        E + "storage '{runs}' is not writable: writing {runs}/.caviar-probe-…: …Permission denied…",
        corrupt=lambda sweep: sweep.parent.chmod(0o500),
        only_unprivileged=True,
    ),
    Case(
        "sweep_exists",
        (*RUN, "--name", "done"),
        E + "sweep '{sweep}' already exists (pass --overwrite to replace it, or another --name; from Python: "
            "overwrite=True or name=...)",
    ),
    Case(
        "name_parent_traversal",
        (*RUN, "--name", "../escaped"),
        E + "sweep name '../escaped': use letters, digits, '_', '-', '.' (no '/', no '..', 1-128 chars)",
    ),
    Case(
        "name_absolute_path",
        (*RUN, "--name", "/tmp/escaped"),
        E + "sweep name '/tmp/escaped': use letters, digits, '_', '-', '.' (no '/', no '..', 1-128 chars)",
    ),
    Case(
        "name_empty",
        (*RUN, "--name", ""),
        E + "sweep name '': use letters, digits, '_', '-', '.' (no '/', no '..', 1-128 chars)",
    ),
    # damaged sweeps
    Case(
        "status_no_trials_table",
        ("status", "{sweep}"),
        E + "{sweep}/trials/trials.parquet: no such file (…)",
        corrupt=delete_trials_table,
    ),
    Case(
        "top_no_trials_table",
        ("top", "{sweep}"),
        E + "{sweep}/trials/trials.parquet: no such file (…)",
        corrupt=delete_trials_table,
    ),
    Case(
        "report_no_trials_table",
        ("report", "{sweep}", "--out", "{work}/report.html"),
        E + "{sweep}/trials/trials.parquet: no such file (…)",
        corrupt=delete_trials_table,
    ),
    Case(
        "resume_no_trials_table",
        ("resume", "{sweep}", "--plain"),
        E + "{sweep}/trials/trials.parquet: no such file (the sweep's trials table is missing; nothing was written)",
        corrupt=delete_trials_table,
    ),
    Case(
        "ensemble_weights_not_safetensors",
        ("ensemble", "{sweep}", "--method", "soup", "--trust-task-code"),
        E + "{sweep}/weights/trial-….safetensors: not a readable safetensors file (…)",
        corrupt=weights_that_are_not_safetensors,
    ),
    Case(
        "status_not_a_sweep",
        ("status", "{runs}/nosuch"),
        E + "'{runs}/nosuch' is not a caviar sweep directory (no sweep/sweep.parquet)",
    ),
    Case(
        "status_of_the_storage_folder",  # the folder above the sweep: named as one, with what to type instead
        ("status", "{runs}"),
        E + "'{runs}' is not a caviar sweep directory (no sweep/sweep.parquet); it is a storage folder of 1 sweep "
        "(…): name one as {runs}/NAME, or list them with caviar ls {runs}",
    ),
    Case(
        "status_truncated_trials",
        ("status", "{sweep}"),
        E + "{sweep}/trials/trials.parquet: not a readable Parquet file (…)",
        corrupt=truncate_trials,
    ),
    Case(
        "top_garbled_sweep_row",
        ("top", "{sweep}"),
        E + "{sweep}/sweep/sweep.parquet: not a readable Parquet file (…)",
        corrupt=garble_sweep_row,
    ),
    Case(
        "report_bit_rot_in_metrics",
        ("report", "{sweep}", "--out", "{work}/report.html"),
        E + "{sweep}/metrics/trial-000000.parquet: not a readable Parquet file (…)",
        corrupt=flip_a_metrics_page,
    ),
    Case(
        "ensemble_soup_checksum_mismatch",
        ("ensemble", "{sweep}", "--method", "soup", "--trust-task-code"),
        E + "{sweep}/weights/trial-….safetensors: sha256 mismatch (the index records …..., the file has …...); "
        "it changed after it was written",
        corrupt=flip_every_weights_file,
    ),
    Case(
        "ensemble_index_points_outside",
        ("ensemble", "{sweep}", "--method", "soup", "--trust-task-code"),
        E + "{sweep}: '../../outside.safetensors' points outside it (absolute or '..')",
        corrupt=point_the_index_outside,
    ),
]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a folder, or its file's sha256."""
    out = {}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    places: dict[str, str]
    unchanged: bool


@pytest.fixture(scope="module")
def finished_sweep(ray_session, tmp_path_factory) -> Path:
    """One real two-trial sweep of the tiny task, ensembles included: what every case starts from."""
    storage = tmp_path_factory.mktemp("finished")
    run_sweep(TINY_TASK, trials=2, epochs=1, slots=1, storage=str(storage), name="done", seed=3)
    return storage / "done"


def run_case(case: Case, base: Path, sweep: Path) -> Outcome:
    work = base / case.id
    runs = work / "runs"
    shutil.copytree(sweep, runs / "done")
    (work / "light_task.py").write_text(LIGHT_TASK)
    (work / "no_model_task.py").write_text(NO_MODEL_TASK)
    (work / "a_file").write_text("a file, not a folder\n")
    for name, text in CONFIGS.items():
        (work / name).write_text(text)
    if case.corrupt:
        case.corrupt(runs / "done")
    places = {"work": str(work), "runs": str(runs), "sweep": str(runs / "done"), "port": str(free_port())}
    before = snapshot(runs)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CAVIAR_IO_ATTEMPTS")}
    proc = subprocess.run(
        [CAVIAR, *(a.format(**places) for a in case.args)],
        cwd=work,
        env={**env, **case.env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    runs.chmod(0o755)
    return Outcome(proc.returncode, proc.stdout, proc.stderr, places, snapshot(runs) == before)


def runnable(case: Case) -> bool:
    return not (case.only_unprivileged and os.geteuid() == 0)


@pytest.fixture(scope="module")
def outcomes(finished_sweep, tmp_path_factory) -> dict[str, Outcome]:
    """Every runnable case, four processes at a time."""
    base = tmp_path_factory.mktemp("cases")
    cases = [c for c in CASES if runnable(c)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda c: run_case(c, base, finished_sweep), cases)
        return {case.id: outcome for case, outcome in zip(cases, results)}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_named_error_and_storage_is_untouched(case: Case, outcomes: dict[str, Outcome]):
    if not runnable(case):
        pytest.skip("root ignores file permissions")
    outcome = outcomes[case.id]
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert outcome.returncode == 2, outcome.stdout[-2000:] + outcome.stderr[-3000:]
    assert len(lines) == 1, outcome.stderr[-3000:]
    expected = case.error.format(**outcome.places)
    assert re.fullmatch(".*".join(re.escape(part) for part in expected.split("…")), lines[0]), (lines[0], expected)
    assert outcome.unchanged, "the storage folder changed"
    assert not os.path.exists(os.path.join(outcome.places["work"], "report.html"))


def test_load_ensemble_refuses_weights_whose_sha256_changed(finished_sweep, tmp_path):
    from worker.load.ensemble_model import load_ensemble

    sweep = tmp_path / "done"
    shutil.copytree(finished_sweep, sweep)
    flip_every_weights_file(sweep)
    before = snapshot(sweep)
    with pytest.raises(StorageError, match=rf"^{re.escape(str(sweep))}/\S+\.safetensors: sha256 mismatch"):
        load_ensemble(str(sweep), trust_task_code=True)
    assert snapshot(sweep) == before


def test_resume_of_a_finished_sweep_changes_nothing_and_says_so(finished_sweep, tmp_path):
    sweep = tmp_path / "done"
    shutil.copytree(finished_sweep, sweep)
    before = snapshot(sweep)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([CAVIAR, "resume", str(sweep), "--plain"], capture_output=True, text=True, env=env,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"sweep {sweep} has finished: nothing to resume, nothing written" in proc.stdout
    assert snapshot(sweep) == before


def test_a_pickled_resume_state_is_refused_naming_its_path(tmp_path):
    import torch

    from orchestrator.store.storage import Storage
    from worker.train.recorder import load_resume_state, resume_path

    storage = Storage.from_uri(str(tmp_path / "sweep"))
    storage.write_bytes(resume_path(3), b"")
    target = tmp_path / "sweep" / resume_path(3)
    torch.save({"model": object()}, target)  # arbitrary pickled objects: weights_only refuses them
    with pytest.raises(StorageError, match=rf"^{re.escape(str(target))}: not a resume state caviar can load safely"):
        load_resume_state(storage, 3)
