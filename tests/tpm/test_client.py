"""Opening a TPM connection: what a TCTI string that leads nowhere gives."""

from __future__ import annotations

import subprocess

import pytest
from tpm2_pytss.types import (
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_PCR_SELECTION,
    TPMT_HA,
)

from cvtpm.errors import TpmError
from cvtpm.tpm import client
from cvtpm.tpm.client import TpmClient


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
        for n, (bank, size) in enumerate(client.DIGEST_SIZES.items())
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
