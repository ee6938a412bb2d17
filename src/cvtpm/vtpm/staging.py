"""A new vTPM's state, made in the run directory and put on disk once, when done.

Every NV change a TPM makes rewrites swtpm's whole state file: a new file,
renamed over the old one. That takes 0.25-0.6 ms on an ext4 disk and a few
microseconds on a tmpfs, and making a vTPM takes seven of them (libtpms's
manufacture, the start-up, two persistent keys, the EK certificate's NV
define, write and lock). So a new vTPM's swtpm reaches its state through a
symbolic link in the run directory (a tmpfs on a host, as /run is): to a
staging directory beside it while the vTPM is made, then, by `commit`, to the
vTPM's state directory on disk, with the state copied there. swtpm opens its
state files by path at every write, so from then on it writes to disk. A vTPM
is recorded as made only after `commit`; one that a crash leaves unfinished
is never started (the pool discards its own, and `cvtpm vtpm delete` removes
one made by name).

swtpm locks its state directory against a second swtpm on the same state, but
it takes that lock where the link points first: in the staging directory. The
state directory on disk is locked on its behalf (`prepare`) with an open file
description lock on the same lock file (fcntl(2), F_OFD_SETLK), whose
descriptor swtpm inherits: it holds the lock until swtpm exits, and conflicts
with the lock a second swtpm tries to take there.

Known gap: swtpm 0.7 (Debian 12's) takes its lock again at every power cycle
(CMD_INIT on its control channel). After `commit` that lock is the one held
for it, and conflicts: the TPM then fails every command until swtpm is
killed (`VtpmManager.stop` does). cvtpm power-cycles a vTPM only while
making it, before `commit`, and containers never reach the control channel;
`swtpm_ioctl -i` by hand on such a vTPM breaks it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
from pathlib import Path

from cvtpm.errors import StateError

# swtpm's files in a state directory (swtpm src/swtpm/swtpm_nvstore_dir.c).
LOCK_FILE = ".lock"
PERMANENT_STATE = "tpm2-00.permall"

# struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid (0,
# as F_OFD_SETLK requires), padding. The whole file, for writing.
_WRITE_LOCK_ALL = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)


def prepare(state_dir: Path, run_dir: Path) -> tuple[Path, int]:
    """The link to give swtpm as its state directory, and the lock of `state_dir`.

    Both directories must exist. The link points to a new staging directory;
    the descriptor holds `state_dir`'s lock, for swtpm to inherit. StateError
    if another swtpm runs on `state_dir`.
    """
    fd = os.open(
        state_dir / LOCK_FILE,
        os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _WRITE_LOCK_ALL)
    except OSError as exc:
        os.close(fd)
        raise StateError(
            f"the state in {state_dir} is in use by another swtpm ({exc.strerror})"
        ) from exc

    try:
        staging = staging_dir(run_dir)
        staging.mkdir(mode=0o700, exist_ok=True)
        link = state_link(run_dir)
        _point(link, staging)
    except BaseException:
        os.close(fd)
        raise
    return link, fd


def commit(state_dir: Path, run_dir: Path) -> None:
    """Copy the made state into `state_dir`, and point swtpm's link there."""
    staging = staging_dir(run_dir)
    made = sorted(staging.glob("tpm2-*"))
    if not any(path.name == PERMANENT_STATE for path in made):
        raise StateError(f"swtpm left no {PERMANENT_STATE} in {staging}")
    for path in made:
        _copy_into(path, state_dir / path.name)

    _point(state_link(run_dir), state_dir.absolute())
    shutil.rmtree(staging, ignore_errors=True)


def state_link(run_dir: Path) -> Path:
    """The link a new vTPM's swtpm has for its state directory."""
    return run_dir.absolute() / "state"


def staging_dir(run_dir: Path) -> Path:
    """Where a new vTPM's state is made, in its run directory."""
    return run_dir.absolute() / "staging"


def _point(link: Path, target: Path) -> None:
    """Make `link` a symbolic link to `target`, replacing what it was at once."""
    new = link.with_name(f".{link.name}.new")
    new.unlink(missing_ok=True)
    new.symlink_to(target)
    os.replace(new, link)


def _copy_into(source: Path, target: Path) -> None:
    """Copy a state file, readable by root alone, in place of `target`, the way
    swtpm writes its own: a new file renamed over the old one.

    swtpm never fsyncs its state; what keeps a vTPM's state across a power
    loss is that ext4, with its default options (auto_da_alloc, and
    data=ordered), puts the data of a file renamed over an existing one on
    disk before it records the rename (fs/ext4/namei.c, ext4_rename). A new
    vTPM has no old file yet, so an empty one is put first for the copy to
    replace: the copy is then as durable as each of swtpm's own writes.
    """
    with contextlib.suppress(FileExistsError):
        os.close(_create(target, os.O_EXCL))
    new = target.with_name(f".{target.name}.new")
    with open(_create(new, os.O_TRUNC), "wb") as out:
        out.write(source.read_bytes())
    os.replace(new, target)


def _create(path: Path, flag: int) -> int:
    """A descriptor of `path`, made mode 0600 for writing (with O_EXCL or O_TRUNC)."""
    return os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | flag, 0o600
    )
