"""A new vTPM made in its run directory and put on disk once (cvtpm.vtpm.staging),
with real swtpm processes."""

from __future__ import annotations

import os
import stat

import pytest

from cvtpm.errors import StateError
from cvtpm.tpm.templates import AK_HANDLES, marshaled_template
from cvtpm.vtpm import staging, swtpm

pytestmark = pytest.mark.swtpm

# A persistent handle that manufacture leaves free (TPM 2.0 Part 2, 7.5).
_FREE_HANDLE = 0x81000100


def _tpmstate(pid: int) -> str:
    """The directory a running swtpm was given (--tpmstate dir=DIR,mode=...)."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        arguments = cmdline.read().decode().split("\0")
    where = arguments[arguments.index("--tpmstate") + 1]
    return where.removeprefix("dir=").split(",mode=")[0]


def test_a_new_vtpm_is_made_in_the_run_directory_then_kept_on_disk(manager):
    """Once made, its state is on disk, readable by root alone, and every
    later NV change goes there; the staging directory is gone."""
    info = manager.create("made")
    paths = manager.swtpm_paths("made")
    saved = paths.permanent_state.read_bytes()

    assert stat.S_IMODE(paths.permanent_state.stat().st_mode) == 0o600
    assert not staging.staging_dir(paths.run_dir).exists()
    link = staging.state_link(paths.run_dir)
    assert _tpmstate(info.pid) == str(link)
    assert os.path.samefile(link, paths.state_dir)

    # An NV change after the vTPM was made (a key made persistent) is on disk.
    with manager.client("made") as tpm:
        tpm.create_persistent_primary(marshaled_template("ak", "rsa"), _FREE_HANDLE)
    assert paths.permanent_state.read_bytes() != saved

    # And a restart from the disk alone has it, with the EK and AK.
    manager.stop("made")
    assert manager.start("made").resumed
    with manager.client("made") as tpm:
        assert tpm.read_public(_FREE_HANDLE)
        assert tpm.read_public(AK_HANDLES["ecc"])
        assert tpm.nv_read(0x01C0000A)


def test_the_disk_state_of_a_vtpm_being_made_is_locked_against_a_second_swtpm(
    manager,
):
    """swtpm locks the staging directory it writes; the state directory on
    disk is locked for it until it exits."""
    making = manager.uuid_paths("making")
    key = b"k" * 32
    pid = swtpm.spawn(making, key, staged=True)
    second = swtpm.SwtpmPaths(making.state_dir, making.run_dir.with_name("second"))

    refused = swtpm.exit_reason(second, swtpm.spawn(second, key))
    assert refused is not None and "in use by another swtpm" in str(refused)
    with pytest.raises(StateError, match="in use by another swtpm"):
        staging.prepare(making.state_dir, second.run_dir)

    swtpm.kill(pid)
    after = swtpm.spawn(second, key)
    try:
        assert swtpm.exit_reason(second, after) is None
    finally:
        swtpm.kill(after)


def test_a_vtpm_whose_state_cannot_be_kept_is_not_made(manager, paths, monkeypatch):
    """If the state cannot go to disk, creation fails and leaves nothing."""

    def no_space(state_dir, run_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(staging, "commit", no_space)
    with pytest.raises(OSError, match="No space left"):
        manager.create("unkept")

    assert manager.list() == []
    assert list(paths.vtpms.iterdir()) == []
    assert not any((paths.run / "vtpm").iterdir())
