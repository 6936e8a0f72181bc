"""Shared pieces of the benchmark scripts: the results table (Markdown + Parquet) with its header.

Every table records the machine, library versions, date and the exact command, so a number
in BENCHMARKS.md can be traced back to the run that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PEERS = ("ray", "optuna", "torch", "pyarrow", "duckdb")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PEERS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def header() -> dict[str, str]:
    """Machine, versions, date and command of this run."""
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], meta: Mapping[str, str]) -> str:
    lines = [f"- {key}: {value}" for key, value in meta.items()]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], out_dir: str = RESULTS,
                notes: Sequence[str] = ()) -> tuple[str, str]:
    """Write ``<out_dir>/<name>.md`` and ``.parquet`` (header in the Parquet schema metadata); returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    meta = header()
    md_path, pq_path = os.path.join(out_dir, f"{name}.md"), os.path.join(out_dir, f"{name}.parquet")
    text = markdown(rows, columns, meta)
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    with open(md_path, "w") as f:
        f.write(text)
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})
    pq.write_table(table, pq_path)
    print(text)
    return md_path, pq_path


def run_child(argv: Sequence[str], timeout: float = 3600) -> dict[str, Any]:
    """Run one tool's measurement in a fresh interpreter (its own Ray); it prints one JSON line last."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    outer = time.perf_counter() - started
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1])
    result["process_s"] = outer  # includes interpreter start and imports
    return result


def emit(result: Mapping[str, Any]) -> None:
    """The child's answer: one JSON line on stdout."""
    print(json.dumps(dict(result)), flush=True)


def peer_parser(doc: str, tools: Sequence[str], default_tools: Sequence[str], child_meta: tuple[str, str, str]
                ) -> argparse.ArgumentParser:
    """The options every peer benchmark takes: --tiny, --tools, --out, and the hidden --child re-entry."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--tools", default=",".join(default_tools),
                        help=f"comma-separated subset of {', '.join(tools)}")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=3, metavar=child_meta, help=argparse.SUPPRESS)
    return parser


def chosen_tools(parser: argparse.ArgumentParser, text: str, tools: Sequence[str]) -> list[str]:
    """``--tools`` as a list, refusing names it does not know."""
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = set(chosen) - set(tools)
    if unknown:
        parser.error(f"--tools: unknown {', '.join(sorted(unknown))} (known: {', '.join(tools)})")
    return chosen
