"""The attest fixtures (a provisioned swtpm, local CAs), shared with server tests."""

from __future__ import annotations

from tests.attest.conftest import local_ca, other_ca, swtpm_dir, vtpm

__all__ = ["local_ca", "other_ca", "swtpm_dir", "vtpm"]
