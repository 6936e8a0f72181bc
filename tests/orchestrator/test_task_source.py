"""A sweep carries its task; its code runs only when the caller chooses it. Real files, no Ray, no torch."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from orchestrator.errors import StorageError, TaskError
from orchestrator.spec.task import load_task
from orchestrator.spec.task_source import (
    MANIFEST_PATH,
    portable_ref,
    read_manifest,
    refuse_an_edited_task,
    store_task_source,
    sweep_task,
)
from orchestrator.store import schema
from orchestrator.store.storage import Storage

TASK_SOURCE = """
space = {"lr": 0.1}
metric = "loss"
def load_data():
    return None
def build_model(config):
    return None
"""


def malicious_source(marker) -> str:
    """A task that does harm on import: here it only leaves a marker file behind."""
    return f"open({str(marker)!r}, 'w').write('ran')\n" + TASK_SOURCE


def write_sweep_row(sweep: Storage, task: str) -> None:
    row = {"name": "s", "task": task, "seed": 0, "settings": "{}", "space": "{}", "caviar_version": "test"}
    sweep.write_table(schema.SWEEP_PATH, schema.to_table([row], schema.SWEEP))


@pytest.fixture
def stored(tmp_path):
    """A sweep whose task file (and config) were copied in; then the original file is deleted."""
    source = tmp_path / "work" / "regression_task.py"
    source.parent.mkdir()
    source.write_text(TASK_SOURCE)
    config = tmp_path / "work" / "sweep.toml"
    config.write_text("[run]\ntrials = 4\n")
    sweep = Storage.from_uri(str(tmp_path / "runs")).child("s")
    manifest = store_task_source(sweep, load_task(str(source)), str(config))
    write_sweep_row(sweep, portable_ref(str(source)))
    source.unlink()
    return sweep, manifest


def test_the_sweep_keeps_a_copy_with_its_sha256_and_a_portable_reference(stored):
    sweep, manifest = stored
    assert manifest.ref == "regression_task.py" and manifest.kind == "file"
    assert sweep.read_bytes("task/regression_task.py").decode() == TASK_SOURCE
    assert sweep.read_bytes("task/config.toml") == b"[run]\ntrials = 4\n"
    assert read_manifest(sweep) == manifest and len(manifest.sha256) == 64 and len(manifest.config_sha256) == 64
    assert portable_ref("/tmp/ray/session_1/runtime_resources/_ray_pkg_ab/digits_mlp.py:task") == "digits_mlp.py:task"
    assert portable_ref("mypkg.tasks:digits") == "mypkg.tasks:digits"


def test_the_stored_copy_runs_only_on_opt_in_from_any_working_directory(stored, tmp_path, monkeypatch):
    sweep, _ = stored
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("CAVIAR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(TaskError) as refused:
        sweep_task(sweep)
    message = str(refused.value)
    assert "\n" not in message and "task/regression_task.py" in message
    assert "--task" in message and "task=" in message and "--trust-task-code" in message
    assert "trust_task_code=True" in message
    task = sweep_task(sweep, trust_task_code=True)
    assert task.metric == "loss" and task.ref.startswith(str(tmp_path / "cache"))
    assert os.path.basename(task.ref) == "regression_task.py"


def test_a_malicious_task_in_a_sweep_folder_never_runs_without_opt_in(tmp_path, monkeypatch):
    """A sweep someone handed over, its task pointed at a file inside it: refused, the file never imported."""
    marker = tmp_path / "marker"
    sweep = Storage.from_uri(str(tmp_path / "runs")).child("s")
    evil = tmp_path / "evil.py"
    evil.write_text(malicious_source(marker))
    sweep.write_bytes("task/evil.py", evil.read_bytes())
    manifest = {"ref": "evil.py", "kind": "file", "source": "task/evil.py",
                "sha256": __import__("hashlib").sha256(evil.read_bytes()).hexdigest()}
    sweep.write_bytes(MANIFEST_PATH, json.dumps(manifest).encode())
    write_sweep_row(sweep, os.path.join(sweep.root, "task", "evil.py"))
    monkeypatch.chdir(sweep.root)  # even standing in the sweep folder, nothing resolves against it
    with pytest.raises(TaskError, match="--trust-task-code"):
        sweep_task(sweep, purpose="to resume")
    sweep.delete(MANIFEST_PATH)  # a sweep without a manifest: only the table's reference is left
    with pytest.raises(TaskError, match="--trust-task-code"):
        sweep_task(sweep)
    write_sweep_row(sweep, "task/evil.py")
    with pytest.raises(TaskError, match="relative path, which never resolves against this working directory"):
        sweep_task(sweep, trust_task_code=True)
    assert not marker.exists()


def test_a_changed_copy_or_a_manifest_pointing_outside_is_refused_even_when_trusted(stored, tmp_path, monkeypatch):
    sweep, manifest = stored
    monkeypatch.setenv("CAVIAR_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "marker"
    sweep.write_bytes("task/regression_task.py", malicious_source(marker).encode())
    with pytest.raises(StorageError, match=r"task/regression_task.py: sha256 mismatch .*refusing to run"):
        sweep_task(sweep, trust_task_code=True)
    (tmp_path / "outside.py").write_text(malicious_source(marker))
    for source in ("../../outside.py", str(tmp_path / "outside.py"), "weights/x.py"):
        sweep.write_bytes(MANIFEST_PATH, json.dumps({**manifest.__dict__, "source": source}).encode())
        with pytest.raises(StorageError):
            sweep_task(sweep, trust_task_code=True)
    assert not marker.exists()


def test_a_module_task_is_recorded_by_name_and_imported_only_on_opt_in(tmp_path, monkeypatch):
    package = tmp_path / "pkgs"
    package.mkdir()
    (package / "my_tasks.py").write_text("class regression:\n" + "\n".join("    " + line for line in
                                                                         TASK_SOURCE.strip().splitlines()) + "\n")
    monkeypatch.syspath_prepend(str(package))
    sweep = Storage.from_uri(str(tmp_path / "runs")).child("s")
    manifest = store_task_source(sweep, load_task("my_tasks:regression"))
    write_sweep_row(sweep, manifest.ref)
    assert (manifest.kind, manifest.ref, manifest.source) == ("module", "my_tasks:regression", None)
    with pytest.raises(TaskError, match="module my_tasks:regression, not copied into the sweep"):
        sweep_task(sweep)
    assert sweep_task(sweep, trust_task_code=True).metric == "loss"
    assert sweep_task(sweep, "my_tasks:regression").metric == "loss"  # the caller's own choice


def test_a_stored_task_that_imports_its_neighbours_says_to_pass_the_task(tmp_path, monkeypatch):
    """Only the task file travels: a sibling import fails with a line saying what to do instead."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "helpers.py").write_text("LR = 0.1\n")
    (work / "uses_helpers.py").write_text("from helpers import LR  # noqa\n" + TASK_SOURCE)
    sweep = Storage.from_uri(str(tmp_path / "runs")).child("s")
    store_task_source(sweep, load_task(str(work / "uses_helpers.py")))
    write_sweep_row(sweep, "uses_helpers.py")
    monkeypatch.setenv("CAVIAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p != str(work)])
    monkeypatch.delitem(__import__("sys").modules, "helpers", raising=False)
    with pytest.raises(TaskError, match="only the task file is stored in the sweep.*--task FILE"):
        sweep_task(sweep, trust_task_code=True)


EDITED_SOURCE = TASK_SOURCE.replace("return None\n", "return 4  # build_model now ignores the config\n", 1)


def test_a_task_edited_since_the_sweep_started_is_refused_in_one_line(stored, tmp_path, monkeypatch):
    """Resuming with other code would mix two versions of build_model in one sweep: refused, both sha256s named."""
    sweep, manifest = stored
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edited.py").write_text(EDITED_SOURCE)
    for task in ("edited.py", str(tmp_path / "edited.py"), load_task("edited.py")):  # relative, absolute, loaded
        with pytest.raises(TaskError) as refused:
            refuse_an_edited_task(sweep, task)
        message = str(refused.value)
        assert "\n" not in message and manifest.sha256[:12] in message
        assert f"your task {tmp_path / 'edited.py'} has sha256 " in message
        assert "--trust-task-code" in message and "start a new sweep" in message and "nothing was written" in message


def test_the_same_task_bytes_at_any_path_or_no_task_or_no_copy_to_compare_are_let_through(stored, tmp_path,
                                                                                          monkeypatch):
    sweep, _ = stored
    monkeypatch.chdir(tmp_path)
    (tmp_path / "moved_copy.py").write_text(TASK_SOURCE)  # same bytes, another name and folder
    # A missing file is let through too: load_task then names it.
    for task in ("moved_copy.py", load_task("moved_copy.py"), None, "no_such_file.py"):
        refuse_an_edited_task(sweep, task)
    sweep.delete(MANIFEST_PATH)  # a sweep from before task copies: nothing to compare with
    (tmp_path / "edited.py").write_text(EDITED_SOURCE)
    refuse_an_edited_task(sweep, "edited.py")


def test_a_module_task_is_compared_by_its_source_file_when_the_sweep_stored_a_file(stored, tmp_path, monkeypatch):
    sweep, _ = stored
    package = tmp_path / "pkgs"
    package.mkdir()
    (package / "same_task.py").write_text(TASK_SOURCE)
    (package / "edited_task.py").write_text(EDITED_SOURCE)
    monkeypatch.syspath_prepend(str(package))
    refuse_an_edited_task(sweep, "same_task")
    with pytest.raises(TaskError, match=f"your task {package / 'edited_task.py'} has sha256 "):
        refuse_an_edited_task(sweep, "edited_task")
    refuse_an_edited_task(sweep, "not_a_module_anywhere")  # load_task names what is wrong with it


def test_the_modules_beside_the_task_that_it_imports_are_recorded_and_an_edited_one_refuses_the_resume(
        tmp_path, monkeypatch):
    """Only the task file is copied, but its helpers decide the model too: each one's sha256 is in the manifest, and a
    resume with one of them edited is refused, in one line naming it, as an edited task file is."""
    import sys

    work = tmp_path / "work"
    (work / "sib_models").mkdir(parents=True)
    (work / "sib_helpers.py").write_text("import sib_deeper  # noqa\nWIDTH = 8\n")
    (work / "sib_deeper.py").write_text("DEPTH = 2\n")
    (work / "sib_models" / "__init__.py").write_text("")
    (work / "sib_models" / "cnn.py").write_text("class Net:\n    pass\n")
    (work / "sib_plain.py").write_text("LR = 0.01\n")  # gives the task a plain value only: no __module__ to follow
    (work / "sib_unrelated.py").write_text("X = 1\n")  # beside the task, imported by someone else, not by it
    (work / ".venv" / "lib" / "site-packages").mkdir(parents=True)  # a virtualenv inside the project: never hashed
    (work / ".venv" / "lib" / "site-packages" / "sib_installed.py").write_text("Y = 2\n")
    (work / "task.py").write_text("import sib_helpers\nimport sib_installed  # noqa\nfrom sib_models.cnn import Net\n"
                                  "from sib_plain import LR  # noqa\n" + TASK_SOURCE)
    monkeypatch.syspath_prepend(str(work / ".venv" / "lib" / "site-packages"))
    monkeypatch.syspath_prepend(str(work))
    for name in ("sib_helpers", "sib_deeper", "sib_models", "sib_models.cnn", "sib_unrelated", "sib_installed",
                 "sib_plain"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    __import__("sib_unrelated")
    sweep = Storage.from_uri(str(tmp_path / "runs")).child("s")
    manifest = store_task_source(sweep, load_task(str(work / "task.py")))
    digest = {name: hashlib.sha256((work / name).read_bytes()).hexdigest()
              for name in ("sib_helpers.py", "sib_deeper.py", "sib_models/cnn.py", "sib_plain.py")}
    assert manifest.modules == dict(sorted(digest.items())) == read_manifest(sweep).modules
    refuse_an_edited_task(sweep, str(work / "task.py"))  # nothing changed: let through
    (work / "sib_unrelated.py").write_text("X = 2\n")
    refuse_an_edited_task(sweep, str(work / "task.py"))  # not the task's: nothing to say
    (work / "sib_models" / "cnn.py").write_text("class Net:\n    width = 16\n")
    with pytest.raises(TaskError) as refused:
        refuse_an_edited_task(sweep, str(work / "task.py"))
    message = str(refused.value)
    assert "\n" not in message and f"was built with sib_models/cnn.py (sha256 {digest['sib_models/cnn.py'][:12]})" \
        in message
    assert f"but {work / 'sib_models' / 'cnn.py'} now has sha256 " in message and "restore that file" in message


def test_a_plain_value_a_task_imports_from_a_helper_is_read_again_once_the_helper_is_edited(tmp_path, monkeypatch):
    """A notebook's second sweep after editing `LR = 0.01` in the helper a task imports it from (`from sib_lr import
    LR`) runs with the edited value: the helper is found through the task's import statements, since a plain number
    does not say where it came from. A helper inside a package, imported relatively, is found too."""
    import sys

    (tmp_path / "sib_pkg").mkdir()
    (tmp_path / "sib_pkg" / "__init__.py").write_text("")
    (tmp_path / "sib_pkg" / "sizes.py").write_text("from .widths import WIDTH  # noqa\n")
    (tmp_path / "sib_pkg" / "widths.py").write_text("WIDTH = 8\n")
    (tmp_path / "sib_lr.py").write_text("LR = 0.01\n")
    task = tmp_path / "plain_task.py"
    task.write_text("from sib_lr import LR\nfrom sib_pkg.sizes import WIDTH\n" + TASK_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("sib_lr", "sib_pkg", "sib_pkg.sizes", "sib_pkg.widths"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    first = load_task(str(task))
    assert (first.get("LR"), first.get("WIDTH")) == (0.01, 8)
    assert load_task(str(task)).namespace is first.namespace  # nothing edited: the same import
    (tmp_path / "sib_lr.py").write_text("LR = 0.005\n")  # another size: a .pyc of the same second and size is reused
    (tmp_path / "sib_pkg" / "widths.py").write_text("WIDTH = 16\n")
    second = load_task(str(task))
    assert (second.get("LR"), second.get("WIDTH")) == (0.005, 16)


def test_the_task_a_load_or_resume_line_names_is_never_a_ray_jobs_temporary_copy():
    """Inside a submitted job the task file lies in Ray's runtime_resources, gone with the job: the printed lines then
    name the sweep's own copy (trust_task_code) instead."""
    import os

    from orchestrator.app.cli_common import task_file_ref

    job_copy = "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_ab12/digits_mlp.py"
    assert task_file_ref(job_copy) is None and task_file_ref(job_copy + ":task") is None
    assert task_file_ref("examples/digits_mlp.py") == os.path.abspath("examples/digits_mlp.py")
    assert task_file_ref("/abs/task.py:obj") == "/abs/task.py:obj" and task_file_ref("pkg.module") == "pkg.module"


@pytest.mark.parametrize("edited", ["helper", "task"])
def test_an_edit_to_the_same_size_within_one_second_is_read_again_not_taken_from_a_stale_pyc(tmp_path, monkeypatch,
                                                                                             edited):
    """Python checks a cached .pyc by the source's size and its mtime in whole seconds: `LR = 0.01` edited to
    `LR = 0.02` within the second was imported from the old bytecode, so the next sweep ran the old value while its
    stored copy of the task (and the manifest's sha256) held the new."""
    import sys

    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as a plain `python` writes them
    helper, task = tmp_path / "same_size_lr.py", tmp_path / "same_size_task.py"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "same_size_lr", raising=False)
    helper.write_text("LR = 0.01\n")
    task.write_text("from same_size_lr import LR\nWIDTH = 8\n" + TASK_SOURCE)
    first = load_task(str(task))
    assert (first.get("LR"), first.get("WIDTH")) == (0.01, 8)
    target = helper if edited == "helper" else task
    before = os.stat(target)
    target.write_text(target.read_text().replace("LR = 0.01", "LR = 0.02").replace("WIDTH = 8", "WIDTH = 9"))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same second, as a quick second save gives
    assert os.stat(target).st_size == before.st_size
    second = load_task(str(task))
    assert (second.get("LR"), second.get("WIDTH")) == ((0.02, 8) if edited == "helper" else (0.01, 9))


def test_errors_name_the_shipped_folder_not_rays_copy(monkeypatch):
    from orchestrator.spec.task_source import SUBMITTED_FROM_ENV, as_submitted

    copy = "/tmp/ray/session_2026-12-02_19-33-44_357548_30482/runtime_resources/working_dir_files/_ray_pkg_fbcc0baf89"
    line = f"task '{copy}/sensors.py': load_data raised ValueError: missing (sensors.py:13)"
    monkeypatch.delenv(SUBMITTED_FROM_ENV, raising=False)
    monkeypatch.setattr("orchestrator.spec.task_source._shipped", [])
    assert as_submitted(line) == line  # nothing shipped: nothing to name
    monkeypatch.setenv(SUBMITTED_FROM_ENV, "/home/me/sensors/")
    assert as_submitted(line) == line.replace(copy, "/home/me/sensors")
