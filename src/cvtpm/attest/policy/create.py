"""Make a runtime policy from a container's root filesystem."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from cvtpm.attest.policy.model import Digest, RuntimePolicy
from cvtpm.ima.hashes import hash_function
from cvtpm.ima.template import kernel_name

# Shared objects: libc.so.6, ld-linux-x86-64.so.2, libfoo.so
_LIBRARY = re.compile(r"\.so(\.\d+)*$")


def create_policy(
    rootfs: Path,
    alg: str = "sha256",
    *,
    all_files: bool = False,
    binds: Iterable[tuple[Path, Path]] = (),
) -> RuntimePolicy:
    """Hash every regular executable or shared library under `rootfs`.

    Paths are those the container sees (relative to `rootfs`, with a leading
    "/", spaces as "_" like the kernel logs them). Symbolic links are never
    followed, so nothing outside `rootfs` is read; IMA logs a file under its
    resolved path, which the walk reaches on its own. With `all_files`, every
    regular file is hashed (for containers that measure reads too). Each of
    `binds` (host path, path inside) adds the files of a host file or
    directory that is bind-mounted into the container, under the path inside.
    """
    hash_function(alg)  # ValueError early for an algorithm we cannot compute
    root = Path(rootfs)
    if not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(root))

    digests: dict[str, frozenset[Digest]] = {}
    for host, inside in [(root, Path("/")), *binds]:
        for path, seen in _files(Path(host), Path(inside), all_files):
            digests[kernel_name(seen)] = frozenset({Digest(alg, _hash(path, alg))})
    return RuntimePolicy(digests=digests)


def _files(host: Path, inside: Path, all_files: bool) -> Iterator[tuple[Path, str]]:
    """(host path, path inside) of each file under `host` a policy allows."""
    if not host.is_dir():  # a single file bound (a bind mount follows the link)
        candidates = [(host.resolve(), inside.as_posix())]
    else:
        candidates = []
        # onerror: a directory that cannot be read is an error, not a gap.
        for directory, subdirs, files in os.walk(host, onerror=_raise):
            subdirs.sort()
            for name in sorted(files):
                path = Path(directory, name)
                seen = (inside / path.relative_to(host)).as_posix()
                candidates.append((path, seen))
    for path, seen in candidates:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            continue  # symlinks, devices, fifos, sockets
        if all_files or info.st_mode & 0o111 or _LIBRARY.search(path.name):
            yield path, seen


def _hash(path: Path, alg: str) -> bytes:
    # O_NOFOLLOW: a file swapped for a symlink after the walk is not followed;
    # O_NONBLOCK: nor is one swapped for a FIFO waited on.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "no longer a regular file", str(path))
    with os.fdopen(fd, "rb") as handle:
        return hashlib.file_digest(handle, hash_function(alg)).digest()


def _raise(error: OSError) -> None:
    raise error
