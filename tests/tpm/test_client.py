"""Opening a TPM connection: what a TCTI string that leads nowhere gives."""

from __future__ import annotations

import pytest

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
