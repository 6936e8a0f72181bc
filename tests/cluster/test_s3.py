"""A sweep against a real S3-compatible server (moto in server mode) on loopback, read back over S3.

The workers are the session's Ray actors: they reach the server through the storage URI,
credentials included (``s3://KEY:SECRET@bucket/prefix?endpoint_override=...``), because
environment variables set now would not reach a Ray that is already running. The secret
must not land in any of caviar's own tables.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from orchestrator.app.api import load, run_sweep
from orchestrator.store.storage import Storage
from tests.cluster.conftest import ACCESS_KEY, BUCKET, SECRET
from tests.conftest import TINY_TASK


@pytest.mark.timeout(300)
def test_sweep_writes_to_s3_and_reads_back_over_s3(ray_session, s3_server):
    port, client = s3_server
    storage = f"s3://{ACCESS_KEY}:{SECRET}@{BUCKET}/team/sweeps?endpoint_override=127.0.0.1:{port}&scheme=http" \
              "&region=us-east-1"
    result = run_sweep(TINY_TASK, storage=storage, name="on-s3", trials=4, epochs=2, seed=3)
    assert result.path.startswith(f"s3://{ACCESS_KEY}:{SECRET}@{BUCKET}/team/sweeps/on-s3?")

    tables = load(result.path)  # over S3, through pyarrow.fs
    assert tables.trials.num_rows == 4
    assert {t["status"] for t in tables.trials.to_pylist()} <= {"completed", "pruned"}
    assert tables.metrics.num_rows >= 4 and tables.checkpoints.num_rows >= 1

    # The objects are really in the bucket, as another S3 client sees them, and no temp files are left.
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="team/sweeps/on-s3/")["Contents"]]
    assert any(k.endswith(".safetensors") for k in keys) and any("/metrics/" in k for k in keys)
    assert not any(k.rsplit("/", 1)[-1].startswith(".") for k in keys)
    for row in tables.checkpoints.to_pylist():
        assert f"team/sweeps/on-s3/{row['path']}" in keys

    # Credentials stay out of caviar's own files: the stored settings say where, never with what.
    settings = json.loads(tables.sweep["settings"][0].as_py())
    assert SECRET not in settings["storage"] and f"{ACCESS_KEY}:***@{BUCKET}" in settings["storage"]
    sweep = Storage.from_uri(result.path)
    for rel in sweep.list_files(""):
        assert SECRET not in str(pq.read_table(sweep.fs.open_input_file(sweep.path(rel))).to_pylist()), rel
    for rel in sweep.list_files("task", suffix=""):  # the task copy and its manifest, on S3 with the tables
        assert SECRET not in sweep.read_bytes(rel).decode(), rel
    assert sweep.exists("task/tiny_task.py") and sweep.exists("task/manifest.json")


def test_two_claims_of_one_sweep_on_s3_at_once_exactly_one_wins(s3_server):
    """No conditional PUT through pyarrow: write, pause, read back. Two masters racing for one name: one goes on."""
    import threading

    from orchestrator.errors import StorageError
    from orchestrator.store.lease import Lease, read_lease

    port, _ = s3_server
    query = f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    for round_ in range(3):  # three races, each on a fresh name
        uri = f"s3://{ACCESS_KEY}:{SECRET}@{BUCKET}/race/sweep-{round_}{query}"
        start = threading.Barrier(2)
        outcomes: list[Lease | StorageError] = []

        def claim(uri: str = uri, start: threading.Barrier = start, outcomes: list = outcomes) -> None:
            storage = Storage.from_uri(uri)
            start.wait()
            try:
                outcomes.append(Lease.create(storage))
            except StorageError as lost:
                outcomes.append(lost)

        racers = [threading.Thread(target=claim) for _ in range(2)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(timeout=60)
        winners = [o for o in outcomes if isinstance(o, Lease)]
        losers = [str(o) for o in outcomes if isinstance(o, StorageError)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert "taken by another caviar run" in losers[0] or "just claimed" in losers[0], losers
        assert SECRET not in losers[0]
        assert read_lease(Storage.from_uri(uri)).owner == winners[0].record.owner  # the winner's id is what stays


def test_commands_on_s3_uris_never_print_the_secret(s3_server):
    """caviar ls's title, "not a caviar sweep" for a mistyped name, and pyarrow's own text in an error line."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    port, _ = s3_server
    query = f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    root = f"s3://{ACCESS_KEY}:{SECRET}@{BUCKET}/team/sweeps"
    caviar = os.path.join(os.path.dirname(sys.executable), "caviar")
    env = {**os.environ, "CAVIAR_IO_ATTEMPTS": "1", "COLUMNS": "250"}
    for args in (("ls", root + query), ("status", f"{root}/no-such-sweep{query}"), ("ls", f"s4://{ACCESS_KEY}:{SECRET}@b"),
                 ("status", f"s3:/{ACCESS_KEY}:{SECRET}@{BUCKET}/x{query}")):
        done = subprocess.run([caviar, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert SECRET not in done.stdout + done.stderr, (args, done.stdout, done.stderr)
        assert f"{ACCESS_KEY}:***@" in done.stdout + done.stderr, (args, done.stdout, done.stderr)


def test_percent_encoded_special_characters_in_an_s3_prefix_name_the_same_keys_through_child(s3_server):
    """`%3F`, `%23`, `%20` and `%25` in a prefix: a sweep's URI (``child``) opens the keys its root wrote under."""
    port, client = s3_server
    query = f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    for encoded, key in (("what%3F", "what?"), ("runs%20%232", "runs #2"), ("100%25", "100%")):
        root = Storage.from_uri(f"s3://{ACCESS_KEY}:{SECRET}@{BUCKET}/{encoded}{query}")
        sweep = root.child("digits")
        sweep.write_bytes("sweep/sweep.parquet", b"x")
        assert Storage.from_uri(sweep.uri).exists("sweep/sweep.parquet") and root.exists("digits/sweep/sweep.parquet")
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=f"{key}/")["Contents"]]
        assert f"{key}/digits/sweep/sweep.parquet" in keys, keys
