"""Writing key material with the right modes, never briefly readable by others."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes, mode: int = 0o400) -> None:
    """Create `path` with `mode` from the start and write `data`; fails if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_public(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, readable by root only (0600)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def private_dir(path: Path) -> Path:
    """Make `path` (and parents) a directory of mode 0700, and return it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
