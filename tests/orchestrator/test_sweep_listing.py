"""`caviar ls` names each sweep by its folder, the name `--storage` finds it by, also once copied or renamed."""

from __future__ import annotations

import shutil

from orchestrator.store import schema
from orchestrator.store.storage import Storage
from orchestrator.store.sweeps import list_sweeps, resolve_sweep


def write_sweep(folder, name: str) -> None:
    row = {"name": name, "task": "task.py", "seed": 0, "settings": "{}", "space": "{}", "created": schema.now_ms()}
    Storage.from_uri(str(folder)).write_table(schema.SWEEP_PATH, schema.to_table([row], schema.SWEEP))


def test_a_copied_and_a_renamed_sweep_are_listed_by_their_folders(tmp_path):
    storage = tmp_path / "runs ü"
    write_sweep(storage / "digits", "digits")
    shutil.copytree(storage / "digits", storage / "digits-backup")  # a copy kept before an experiment
    write_sweep(storage / "renamed", "old-name")  # run as old-name, its folder renamed since
    names = [row["name"] for row in list_sweeps(str(storage))]
    # before: digits, digits, old-name: two rows of one name, and a name no command finds
    assert sorted(names) == ["digits", "digits-backup", "renamed"]
    for name in names:
        assert resolve_sweep(name, str(storage)) == str(storage / name)  # each listed name finds its own folder


def test_ls_of_a_sweep_folder_says_it_is_a_sweep(tmp_path):
    """Before: "storage '.../digits': no sweeps in it", as if the sweep were missing."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    write_sweep(tmp_path / "digits", "digits")
    caviar = os.path.join(os.path.dirname(sys.executable), "caviar")
    done = subprocess.run([caviar, "ls", str(tmp_path / "digits")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 2
    assert done.stderr.strip() == (f"caviar: error: '{tmp_path / 'digits'}' is a sweep, not a storage folder of "
                                   f"sweeps: caviar status {tmp_path / 'digits'} shows it, caviar ls of the folder "
                                   "above lists it with the others")
