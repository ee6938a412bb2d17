"""Reading the small files users name (policies, certificates, tokens) safely.

A path on a command line may name anything: a FIFO that blocks a read
forever, /dev/zero that never ends, a directory. Only a regular file of a
sane size is read; everything else is a ConfigError that names the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cvtpm.errors import ConfigError

DEFAULT_LIMIT = 1 << 24  # 16 MiB: far more than any policy or certificate bundle


def read_regular_file(
    path: str | os.PathLike, what: str, limit: int = DEFAULT_LIMIT
) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes.

    `what` names the file in errors ("the IMA policy", "the token file").
    Opened non-blocking, so that a FIFO is refused instead of waited on.
    """
    shown = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {shown}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{what} {shown} is not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ConfigError(f"{what} {shown} is larger than {limit} bytes")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {shown}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def write_regular_file(path: str | os.PathLike, data: bytes, what: str) -> None:
    """Write `data` to `path`, which must be a regular file or not exist yet.

    Opened non-blocking, so that a FIFO is refused instead of waited on, and
    refused before it is truncated if it is anything but a regular file.
    """
    shown = Path(path)
    try:
        # A FIFO without a reader would answer ENXIO, which says nothing.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConfigError(f"{what} {shown} is not a regular file")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {shown}: {exc.strerror}") from None
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644
        )
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {shown}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{what} {shown} is not a regular file")
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {shown}: {exc.strerror}") from None
    finally:
        os.close(fd)
