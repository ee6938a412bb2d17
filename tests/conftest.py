"""Fixtures shared by every test directory: short state trees and a vTPM manager."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from cvtpm.config import Paths


@pytest.fixture
def short_tmp() -> Path:
    """A fresh directory with a short path (unix socket paths hold 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="cvt", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


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
