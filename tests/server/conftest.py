"""Server fixtures: the attest ones (a provisioned swtpm, local CAs) and runc."""

from __future__ import annotations

import pytest

from tests.attest.conftest import local_ca, other_ca, swtpm_dir, vtpm
from tests.support.runc import Runc

__all__ = ["local_ca", "other_ca", "swtpm_dir", "vtpm"]


@pytest.fixture
def runc(short_tmp):
    """runc with its own state root; containers left running are killed after."""
    r = Runc(short_tmp / "runc-root")
    yield r
    r.cleanup()
