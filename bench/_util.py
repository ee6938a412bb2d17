"""Shared pieces of the benchmarks: summary statistics, the results files,
and a host's directories."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cvtpm.config import Paths

RESULTS = Path(__file__).resolve().parent / "results"


def summary(samples: list[float], scale: float = 1000.0) -> dict[str, float]:
    """min, median, p99 and mean of `samples` (seconds), in ms by default."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "min": ordered[0] * scale,
        "median": statistics.median(ordered) * scale,
        "p99": p99 * scale,
        "mean": statistics.fmean(ordered) * scale,
    }


def machine() -> dict[str, str | int]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count() or 0,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write(name: str, data: dict) -> Path:
    """Write `bench/results/NAME.json`, with the machine it ran on."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


@contextmanager
def run_tmpfs(path: Path) -> Iterator[Path]:
    """A tmpfs at `path` for as long as the block runs: where a host keeps what
    lives only while it runs (/run on Debian: cvtpm's run directory, runc's
    state), so that a benchmark's sockets and logs are not written to disk."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "cvtpm-bench", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


@contextmanager
def host_tree(prefix: str) -> Iterator[Paths]:
    """cvtpm's directories laid out as on a host, removed at the end: the
    state (vTPM states, lists) on disk, the run directory on a tmpfs
    (`run_tmpfs`), both under one new directory in /tmp."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        with run_tmpfs(work / "run") as run:
            yield Paths(state=work / "s", run=run / "cvtpm").ensure()
    finally:
        shutil.rmtree(work, ignore_errors=True)
