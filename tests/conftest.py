"""Fixtures shared by every test directory: short state trees, a vTPM manager,
and a real PostgreSQL server for the stores that take one."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from cvtpm.config import Paths


@pytest.fixture
def short_tmp() -> Path:
    """A fresh directory with a short path (unix socket paths hold 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="cvt", dir="/tmp"))
    yield directory
    # A test that failed half-way may leave a vTPM running, as a daemon
    # leaves them for the next: it must not outlive its directory.
    _kill_swtpms_under(directory)
    shutil.rmtree(directory, ignore_errors=True)


def _kill_swtpms_under(directory: Path) -> None:
    """SIGKILL every swtpm whose command line names a path in `directory`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(os.fsdecode(arguments[0])).name == "swtpm" and any(
            str(directory).encode() + b"/" in argument for argument in arguments
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture
def paths(short_tmp: Path) -> Paths:
    """cvtpm's state and run directories for one test."""
    return Paths(state=short_tmp / "state", run=short_tmp / "run").ensure()


@pytest.fixture
def manager(paths: Paths):
    """A vTPM manager on the test's own tree; every vTPM it made is deleted after."""
    from cvtpm.vtpm.manager import VtpmManager

    mgr = VtpmManager(paths)
    yield mgr
    for info in [*mgr.list(), *mgr.pooled()]:
        mgr.delete(info.name)


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool as the postgres user (it refuses to run as root)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, check=True, capture_output=True, **kwargs)


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of a PostgreSQL 15 server on a unix socket, stopped after the session."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="cvtpg", dir="/tmp"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    _as_postgres(
        [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    )
    options = f"-k {sock} -c listen_addresses='' -c fsync=off"
    _as_postgres(
        [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-w", "start"]
        + ["-l", str(root / "log")]
    )
    try:
        yield f"postgresql://postgres@/postgres?host={sock}"
    finally:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"])
        shutil.rmtree(root, ignore_errors=True)
