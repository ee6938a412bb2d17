"""Recording into a list and a real vTPM: a failed extend never leaves them apart."""

from __future__ import annotations

import logging
import os

import pytest

from cvtpm.errors import TpmError
from cvtpm.ima.binary import encode_binary
from cvtpm.ima.entry import boot_aggregate, ima_ng
from cvtpm.ima.replay import replay
from cvtpm.measure import container as container_module
from cvtpm.measure.container import Container, ContainerSpec
from cvtpm.measure.journal import BINARY_NAME, MeasurementList, read_list

pytestmark = pytest.mark.swtpm

ENTRIES = [
    boot_aggregate(None),
    ima_ng("/bin/a", bytes(32 * [1])),
    ima_ng("/bin/b", bytes(32 * [2])),
    ima_ng("/bin/c", bytes(32 * [3])),
]


class Connections:
    """A factory of TPM connections that remembers which it opened and closed."""

    def __init__(self, tpm):
        self.tpm = tpm
        self.opened = []
        self.closed = []

    def __call__(self):
        client = self.tpm.client()
        index = len(self.opened)
        self.opened.append(client)
        real_close = client.close

        def close():
            self.closed.append(index)
            real_close()

        client.close = close
        return client


def make_container(tmp_path, extender) -> Container:
    """A container whose list is tmp_path/list, without marks or processes."""
    list_dir = tmp_path / "list"
    spec = ContainerSpec("c", list_dir, extender, mnt_ns=1, mounts=[str(tmp_path)])
    return Container(
        spec=spec,
        mnt_ns=1,
        policy=None,
        mlist=MeasurementList(list_dir),
        boot_aggregate=ENTRIES[0],
    )


def test_a_failed_extend_is_reconciled_before_the_next_entry(
    tmp_path, swtpm_factory, monkeypatch, caplog
):
    """An entry journaled whose extend fails: the access is refused, the connection
    dropped, and the next entry first reconnects and extends the one missed."""
    tpm = swtpm_factory()
    connections = Connections(tpm)
    c = make_container(tmp_path, connections)
    c.begin()
    c.record(ENTRIES[1])

    # 1. The extend of entry 2 fails once, after the journal has it.
    real_extend = container_module.extend

    def failing_extend(*args):
        monkeypatch.setattr(container_module, "extend", real_extend)
        raise TpmError("TPM2_PCR_Extend", rc=0x101)

    monkeypatch.setattr(container_module, "extend", failing_extend)
    with pytest.raises(TpmError, match="extending PCR 10 of c"):
        c.record(ENTRIES[2])

    assert read_list(tmp_path / "list") == ENTRIES[:3]
    assert tpm.pcr10() == replay(ENTRIES[:2], "sha256")
    assert connections.closed == [0]
    assert "entry 2 ('/bin/b') is journaled but not in PCR 10" in caplog.text

    # 2. The next entry reconnects; reconcile extends entry 2 before it.
    c.record(ENTRIES[3])

    assert len(connections.opened) == 2
    assert connections.closed == [0]
    assert tpm.pcr10("sha256") == replay(ENTRIES, "sha256")
    assert tpm.pcr10("sha1") == replay(ENTRIES, "sha1")
    c.close()


def test_swtpm_killed_between_append_and_extend(tmp_path, swtpm_factory, monkeypatch):
    """swtpm dies right after the journal write: the extend fails, and once swtpm is
    back (PCRs reset) the whole list is replayed before the next entry."""
    tpm = swtpm_factory()
    c = make_container(tmp_path, Connections(tpm))
    c.begin()
    c.record(ENTRIES[1])

    real_append = MeasurementList.append

    def append_then_kill(self, entry):
        real_append(self, entry)
        tpm.stop()

    monkeypatch.setattr(MeasurementList, "append", append_then_kill)
    with pytest.raises(TpmError):
        c.record(ENTRIES[2])
    monkeypatch.undo()

    tpm.start()
    c.record(ENTRIES[3])

    assert read_list(tmp_path / "list") == ENTRIES
    assert tpm.pcr10() == replay(ENTRIES, "sha256")
    c.close()


def test_the_first_record_begins_the_list_with_boot_aggregate(tmp_path, swtpm_factory):
    """Whoever records first, a begin() or a measured access, the list starts with
    boot_aggregate, once, and the PCR follows the list."""
    tpm = swtpm_factory()
    c = make_container(tmp_path, tpm.client)

    c.record(ENTRIES[1])
    c.begin()
    c.record(ENTRIES[2])
    c.close()

    assert read_list(tmp_path / "list") == ENTRIES[:3]
    assert tpm.pcr10() == replay(ENTRIES[:3], "sha256")


def test_a_name_that_is_not_utf8_is_recorded(tmp_path, swtpm_factory):
    """An entry named with bytes ff fe is journaled and extended like any other, and
    the list and the PCR stay in step for the entries after it."""
    tpm = swtpm_factory()
    raw = b"/opt/\xff\xfe/true"
    entries = [ENTRIES[0], ima_ng(os.fsdecode(raw), bytes(32)), ENTRIES[1]]
    c = make_container(tmp_path, tpm.client)

    for entry in entries[1:]:
        c.record(entry)
    c.close()

    assert read_list(tmp_path / "list") == entries
    assert raw + b"\x00" in (tmp_path / "list" / BINARY_NAME).read_bytes()
    assert tpm.pcr10() == replay(entries, "sha256")


def test_a_torn_tail_is_decided_by_the_first_connection(
    tmp_path, swtpm_factory, caplog
):
    """A list left with a torn record is reconciled on connect, which sets the torn
    bytes aside; recording then goes on after the last good entry."""
    caplog.set_level(logging.INFO)
    tpm = swtpm_factory()
    c = make_container(tmp_path, tpm.client)
    c.begin()
    c.record(ENTRIES[1])
    c.close()
    path = tmp_path / "list" / BINARY_NAME
    good = path.read_bytes()
    path.write_bytes(good + encode_binary(ENTRIES[2])[:40])
    tpm.stop()
    tpm.start()

    c = make_container(tmp_path, tpm.client)
    c.record(ENTRIES[3])
    c.close()

    assert read_list(tmp_path / "list") == [*ENTRIES[:2], ENTRIES[3]]
    assert len(path.read_bytes()) == len(good) + len(encode_binary(ENTRIES[3]))
    assert "moved a torn record (40 bytes" in caplog.text
    assert tpm.pcr10() == replay([*ENTRIES[:2], ENTRIES[3]], "sha256")
