"""Shared fixtures for the IMA tests: the real lists under tests/assets."""

from __future__ import annotations

from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "assets"
IBMTSS = ASSETS / "ibmtss-ima-sig.binary_runtime_measurements"
RPI = ASSETS / "rpi-ima-ng.ascii_runtime_measurements"
SIGNED = ASSETS / "signed-ima-sig-ima-buf.ascii_runtime_measurements"
SIGNED_KEYS = ASSETS / "signed-ima-sig-keys.pem"


@pytest.fixture(scope="session")
def ibmtss_bytes() -> bytes:
    """The ibmtss binary list (362 ima-sig entries)."""
    return IBMTSS.read_bytes()


@pytest.fixture(scope="session")
def rpi_bytes() -> bytes:
    """The Raspberry Pi ascii list (922 ima-ng entries)."""
    return RPI.read_bytes()


@pytest.fixture(scope="session")
def signed_bytes() -> bytes:
    """Keylime's six-line list with RSA and ECDSA signatures and an ima-buf entry."""
    return SIGNED.read_bytes()
