"""A vTPM as kernel TPM devices, with every command relayed through the filter.

On kernels with vtpm-proxy (CONFIG_TCG_VTPM_PROXY), the daemon asks /dev/vtpmx
for a new TPM chip and keeps the chip's server end itself: the kernel hands it
every command sent to /dev/tpmN or /dev/tpmrmN, and the daemon checks each one
with the same policy as the filtered socket before forwarding it to the
container's swtpm. A container with devices therefore cannot extend the
measurement PCR either. (Letting swtpm serve the chip itself, as
`swtpm chardev --vtpm-proxy` does, would bypass the filter.)
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from cvtpm.errors import ConfigError, StateError

VTPMX = Path("/dev/vtpmx")

# include/uapi/linux/vtpm_proxy.h: struct vtpm_proxy_new_dev is five u32
# (flags, tpm_num, fd, major, minor); VTPM_PROXY_IOC_NEW_DEV is
# _IOWR(0xa1, 0x00, struct vtpm_proxy_new_dev).
_NEW_DEV = struct.Struct("=5I")
VTPM_PROXY_IOC_NEW_DEV = (3 << 30) | (_NEW_DEV.size << 16) | (0xA1 << 8)
VTPM_PROXY_FLAG_TPM2 = 1

# drivers/char/tpm/tpm_vtpm_proxy.c: the vendor command the driver sends to
# change locality. The container's swtpm stays at locality 0, so the relay
# answers it itself with success.
TPM2_CC_SET_LOCALITY = 0x20001000
SUCCESS_RESPONSE = struct.pack(">HII", 0x8001, 10, 0)

# How long the kernel may take to register the chip (it does so from a work
# queue, after the first commands were answered).
_REGISTER_TIMEOUT = 30.0


@dataclass(frozen=True)
class ProxyChip:
    """A kernel TPM chip whose commands arrive on `fd`."""

    fd: int
    number: int

    @property
    def tpm(self) -> Path:
        return Path(f"/dev/tpm{self.number}")

    @property
    def tpmrm(self) -> Path:
        """The chip under the kernel's resource manager, what tools should use."""
        return Path(f"/dev/tpmrm{self.number}")


def available(vtpmx: Path = VTPMX) -> bool:
    """True if this kernel offers vtpm-proxy (tpm_vtpm_proxy is loaded)."""
    return vtpmx.exists()


def new_chip(vtpmx: Path = VTPMX) -> ProxyChip:
    """VTPM_PROXY_IOC_NEW_DEV: a new TPM 2.0 chip served through the returned fd."""
    if not available(vtpmx):
        raise ConfigError(
            f"{vtpmx} is missing: this kernel has no vtpm-proxy (modprobe "
            "tpm_vtpm_proxy), so containers can only get the TPM socket"
        )
    control = os.open(vtpmx, os.O_RDWR | os.O_CLOEXEC)
    try:
        request = bytearray(_NEW_DEV.pack(VTPM_PROXY_FLAG_TPM2, 0, 0, 0, 0))
        fcntl.ioctl(control, VTPM_PROXY_IOC_NEW_DEV, request)
    finally:
        os.close(control)
    _, number, fd, _major, _minor = _NEW_DEV.unpack(request)
    os.set_blocking(fd, False)
    os.set_inheritable(fd, False)
    return ProxyChip(fd=fd, number=number)


def wait_registered(chip: ProxyChip, timeout: float = _REGISTER_TIMEOUT) -> None:
    """Wait until the kernel has made /dev/tpmN and /dev/tpmrmN for the chip."""
    deadline = time.monotonic() + timeout
    while not (chip.tpm.exists() and chip.tpmrm.exists()):
        if time.monotonic() > deadline:
            raise StateError(
                f"the kernel did not register {chip.tpm} within {timeout:.0f} s"
            )
        time.sleep(0.01)


def command_code(command: bytes) -> int | None:
    """The command code of a TPM command, or None if it is too short to have one."""
    if len(command) < 10:
        return None
    return struct.unpack_from(">I", command, 6)[0]
