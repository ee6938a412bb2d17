"""The list journal: torn records, corruption, and reconciling with a real vTPM."""

from __future__ import annotations

import pytest

from cvtpm.errors import StateError
from cvtpm.ima.entry import boot_aggregate, ima_ng, violation
from cvtpm.ima.replay import replay
from cvtpm.measure.journal import (
    ASCII_NAME,
    BINARY_NAME,
    MeasurementList,
    extend,
    read_list,
)


def sample_entries():
    """boot_aggregate, two files and a violation."""
    return [
        boot_aggregate(None),
        ima_ng("/bin/a", bytes(range(32))),
        violation("/data/w"),
        ima_ng("/bin/b", bytes(32 * [7])),
    ]


def write_list(directory, entries) -> MeasurementList:
    """A list holding `entries`, as the agent writes it."""
    mlist = MeasurementList(directory)
    for entry in entries:
        mlist.append(entry)
    return mlist


def test_reopen_reads_back_what_was_appended(tmp_path):
    """Entries survive a reopen, and the ascii copy matches the binary list."""
    write_list(tmp_path, sample_entries()).close()
    reopened = MeasurementList(tmp_path)
    assert reopened.entries == sample_entries()
    assert (tmp_path / ASCII_NAME).read_text().count("\n") == 4


@pytest.mark.parametrize("cut", [1, 5, 24, 30, 60])
def test_a_torn_last_record_is_cut(tmp_path, cut):
    """A last record cut at any byte is dropped, never misread; the rest stays."""
    write_list(tmp_path, sample_entries()).close()
    path = tmp_path / BINARY_NAME
    data = path.read_bytes()
    path.write_bytes(data[:-cut])

    reopened = MeasurementList(tmp_path)
    assert reopened.entries == sample_entries()[:3]
    assert len(path.read_bytes()) < len(data)


def test_zeros_after_the_last_record_are_cut(tmp_path):
    """A tail of zeros (a crash after the size grew) is not an entry."""
    write_list(tmp_path, sample_entries()).close()
    path = tmp_path / BINARY_NAME
    path.write_bytes(path.read_bytes() + bytes(100))
    assert MeasurementList(tmp_path).entries == sample_entries()


def test_corruption_before_good_records_is_refused(tmp_path):
    """A damaged record with valid ones after it is refused, not truncated away."""
    write_list(tmp_path, sample_entries()).close()
    path = tmp_path / BINARY_NAME
    data = bytearray(path.read_bytes())
    data[30] ^= 0xFF  # inside the template name of boot_aggregate's record
    path.write_bytes(bytes(data))
    with pytest.raises(StateError, match="corrupt"):
        MeasurementList(tmp_path)
    assert path.read_bytes() == bytes(data)


@pytest.mark.swtpm
def test_reconcile_extends_what_the_tpm_missed(tmp_path, swtpm_factory):
    """A PCR behind the journal by k entries gets exactly those k extended."""
    tpm = swtpm_factory()
    mlist = write_list(tmp_path / "l", sample_entries())
    with tpm.client() as client:
        banks = client.active_banks()
        extend(client, mlist.entries[0], banks, 10)
        assert mlist.reconcile(client) == 3
        assert mlist.reconcile(client) == 0
    assert tpm.pcr10() == replay(sample_entries(), "sha256")


@pytest.mark.swtpm
def test_reconcile_replays_into_a_reset_tpm(tmp_path, swtpm_factory):
    """After an swtpm restart (PCR 10 zero) the whole list is replayed."""
    tpm = swtpm_factory()
    mlist = write_list(tmp_path / "l", sample_entries())
    with tpm.client() as client:
        mlist.reconcile(client)
    tpm.stop()
    tpm.start()
    with tpm.client() as client:
        assert mlist.reconcile(client) == 4
    assert tpm.pcr10("sha1") == replay(sample_entries(), "sha1")


@pytest.mark.swtpm
def test_reconcile_refuses_a_pcr_it_cannot_explain(tmp_path, swtpm_factory):
    """A PCR that is no replay of a prefix of the list is left alone, with an error."""
    tpm = swtpm_factory()
    mlist = write_list(tmp_path / "l", sample_entries())
    with tpm.client() as client:
        extend(client, ima_ng("/elsewhere", bytes(32)), client.active_banks(), 10)
        before = client.pcr_read(10)
        with pytest.raises(StateError, match="matches no prefix"):
            mlist.reconcile(client)
        assert client.pcr_read(10) == before
    assert read_list(tmp_path / "l") == sample_entries()
