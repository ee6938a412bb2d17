"""TpmClient: connections, the names it reads, its marshaling, and truncated replies."""

from __future__ import annotations

import subprocess

import pytest
from tests.tpm.test_command import ScriptedTcti
from tpm2_pytss.constants import TPM2_CC, TPM2_ST
from tpm2_pytss.types import (
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_PCR_SELECTION,
    TPMT_HA,
)

from cvtpm.errors import TpmError
from cvtpm.tpm import client
from cvtpm.tpm.client import TpmClient
from cvtpm.tpm.command import CommandChannel
from cvtpm.tpm.templates import marshaled_template


@pytest.mark.parametrize(
    "tcti", ["nosuch:conf", "sw\0tpm:x", ":", "swtpm:path=/nonexistent"]
)
def test_a_tcti_that_leads_nowhere_is_a_tpm_error(tcti):
    """No library, a name no library can have, or no swtpm: TpmError, naming it."""
    with pytest.raises(TpmError, match="cannot reach the TPM"):
        TpmClient(tcti)


def test_the_tcti_library_is_held_once_per_name():
    """The swtpm TCTI's library is loaded once and kept; a missing one is None."""
    for _ in range(3):
        with pytest.raises(TpmError):
            TpmClient("swtpm:path=/nonexistent")
        with pytest.raises(TpmError):
            TpmClient("nosuch:conf")
    assert client._TCTI_LIBRARIES["swtpm"] is not None
    assert client._TCTI_LIBRARIES["nosuch"] is None


def test_the_ak_name_manufacturing_records_is_the_one_tpm2_tools_reads(manager):
    """CreatePrimary's name (no ReadPublic at creation) matches tpm2_readpublic's."""
    info = manager.create("named")
    shown = subprocess.run(
        ["tpm2_readpublic", "-c", hex(info.ak_handle), "-T", info.tcti],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    recorded = manager.registry.get("named").ak_name
    assert f"name: {recorded}" in shown
    with manager.client("named") as tpm:
        assert tpm.read_public(info.ak_handle)[1].hex() == recorded


def test_a_tpm_error_names_the_command_and_the_tpm_code(manager):
    """Reading an NV index that does not exist: TPM_RC_HANDLE, said as such."""
    manager.create("errors")
    with manager.client("errors") as tpm, pytest.raises(TpmError) as err:
        tpm.nv_read(0x01C00099)
    assert "TPM2_NV_ReadPublic failed" in str(err.value)
    assert err.value.rc == 0x18B  # TPM_RC_HANDLE for handle 1


def test_overlapped_work_runs_beside_a_real_command(manager):
    """TpmClient.overlap: the work's value after the block, the command's
    answer unchanged; with no command in the block, the work runs at result()."""
    manager.create("overlap")
    with manager.client("overlap") as tpm:
        with tpm.overlap(sum, [1, 2, 3]) as job:
            banks = tpm.active_banks()
        assert job.result() == 6 and "sha256" in banks

        with tpm.overlap(sum, [4]) as idle:
            pass
        assert idle.result() == 4
        assert tpm.pcr_read(10, ["sha256"])["sha256"] == bytes(32)


def test_a_failed_command_carries_the_overlapped_works_error(manager):
    """When both fail, the TPM's error is raised and the work's is noted on it."""
    manager.create("both")
    with (
        manager.client("both") as tpm,
        pytest.raises(TpmError) as err,
        tpm.overlap(int, "not a number"),
    ):
        tpm.nv_read(0x01C00099)
    assert "TPM2_NV_ReadPublic failed" in str(err.value)
    assert any("int failed: ValueError" in note for note in err.value.__notes__)


@pytest.mark.parametrize(
    "selection",
    [
        {"sha256": [10]},
        {"sha1": [0, 7, 8, 23], "sha512": []},
        {b: [10] for b in client.BANK_ALGS},
    ],
)
def test_pcr_selections_marshal_as_tpm2_pytss_marshals_them(selection):
    """Our hand-made TPML_PCR_SELECTION is byte for byte tpm2-pytss's."""
    reference = TPML_PCR_SELECTION(
        [
            TPMS_PCR_SELECTION(
                hash=client.BANK_ALGS[bank],
                sizeofSelect=3,
                pcrSelect=bytes(
                    sum(1 << (i % 8) for i in pcrs if i // 8 == byte)
                    for byte in range(3)
                ),
            )
            for bank, pcrs in selection.items()
        ]
    )
    assert client._pcr_selection(selection) == reference.marshal()


def test_digest_values_marshal_as_tpm2_pytss_marshals_them():
    digests = {
        bank: bytes([n]) * size
        for n, (bank, size) in enumerate(client.BANK_SIZES.items())
    }
    reference = TPML_DIGEST_VALUES(
        [TPMT_HA(hashAlg=client.BANK_ALGS[bank]) for bank in digests]
    )
    for ha, (bank, digest) in zip(
        reference.digests[: reference.count], digests.items(), strict=True
    ):
        setattr(ha.digest, bank, digest)
    assert client._digest_values(digests) == reference.marshal()


def test_a_digest_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="sha256 digest has 32 bytes, not 20"):
        client._digest_values({"sha256": b"\0" * 20})


class _Recorder:
    """A TCTI wrapper that keeps every (command code, response) it passes."""

    def __init__(self, tcti):
        self.tcti = tcti
        self.seen: list[tuple[int, bytes]] = []

    def transmit(self, command: bytes) -> None:
        self.code = int.from_bytes(command[6:10], "big")
        self.tcti.transmit(command)

    def receive(self) -> bytes:
        response = bytes(self.tcti.receive())
        self.seen.append((self.code, response))
        return response

    def close(self) -> None:
        self.tcti.close()


# Each call, on a client; every response it parses is truncated in turn.
_CALLS = {
    "pcr_read": lambda tpm: tpm.pcr_read(10, ["sha1", "sha256"]),
    "active_banks": lambda tpm: tpm.active_banks(),
    "info": lambda tpm: tpm.info(),
    "read_public": lambda tpm: tpm.read_public(0x81010003),
    "nv_read": lambda tpm: tpm.nv_read(0x01C0000A),
    "quote": lambda tpm: tpm.quote(0x81010003, b"n" * 20, {"sha256": [10]}),
    "create_persistent_primary": lambda tpm: tpm.create_persistent_primary(
        marshaled_template("ak", "ecc"), 0x81010005
    ),
}


def _truncated(code: int, response: bytes, cut: int) -> tuple[bytes, int]:
    """`response` cut to `cut` bytes with its sizes made to agree, so that the
    parsers inside, not the size checks, meet the missing bytes; also where
    its parameters end."""
    start, end = 10 + (4 if code == TPM2_CC.CreatePrimary else 0), len(response)
    out = bytearray(response[:cut])
    out[2:6] = cut.to_bytes(4, "big")
    if int.from_bytes(response[:2], "big") == TPM2_ST.SESSIONS:
        start += 4
        size = int.from_bytes(response[start - 4 : start], "big")
        end = start + size
        if cut >= start:
            out[start - 4 : start] = min(size, cut - start).to_bytes(4, "big")
    return bytes(out), end


@pytest.mark.parametrize("call", sorted(_CALLS))
def test_a_truncated_response_is_a_tpm_error_at_every_byte(manager, call):
    """Real responses, cut at every byte: each parser says TpmError, never crashes."""
    manager.create("cut")
    with manager.client("cut") as tpm:
        recorder = _Recorder(tpm._channel.tcti)
        tpm._channel.tcti = recorder
        _CALLS[call](tpm)
    responses = recorder.seen

    failed = 0
    for k, (code, response) in enumerate(responses):
        for cut in range(10, len(response)):
            shortened, end = _truncated(code, response, cut)
            tcti = ScriptedTcti(*(r for _, r in responses[:k]), shortened)
            tcti.replies += [r for _, r in responses[k + 1 :]]
            client = TpmClient.__new__(TpmClient)
            client.tcti, client._channel = "scripted", CommandChannel(tcti)
            try:
                _CALLS[call](client)
            except TpmError:
                failed += 1
                continue
            # Parsing may only succeed when every parameter byte is there.
            assert cut >= end, f"response {k} cut to {cut} of {end} bytes parsed"
    assert failed > 0


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: client._pcr_selection({"sha256": [24]}),
            "PCR index 24 is out of range",
        ),
        (
            lambda: client._pcr_selection({"sha256": [-1]}),
            "PCR index -1 is out of range",
        ),
        (lambda: client._pcr_selection({"sm3_256": [10]}), "'sm3_256' is not one"),
        (lambda: client._digest_values({"md5": b""}), "PCR bank 'md5' is not one"),
    ],
)
def test_a_pcr_or_bank_that_cannot_be_is_a_value_error(call, message):
    """Never a PCR other than the one asked for (a bitmap of -1 would be PCR 23)."""
    with pytest.raises(ValueError, match=message):
        call()
