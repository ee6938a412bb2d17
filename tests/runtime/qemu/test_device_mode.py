"""The kernel's vtpm-proxy on a real kernel: Debian's, booted under QEMU."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.qemu


def test_vtpmx_appears_after_modprobe(guest_check):
    """Loading tpm_vtpm_proxy in the guest creates the /dev/vtpmx character device."""
    output = guest_check("vtpmx").output

    assert "before=absent" in output
    assert "after=character special file" in output
