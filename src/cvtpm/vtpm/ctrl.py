"""A client for swtpm's control channel (the commands of swtpm's tpm_ioctl.h).

Only the host uses this channel: it can power-cycle the TPM and read its state,
so a container never reaches it.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from cvtpm.errors import TpmError

# swtpm include/swtpm/tpm_ioctl.h: command codes, sent as big-endian u32.
CMD_GET_CAPABILITY = 1
CMD_INIT = 2
CMD_SHUTDOWN = 3
CMD_GET_TPMESTABLISHED = 4
CMD_SET_LOCALITY = 5
CMD_HASH_START = 6
CMD_HASH_DATA = 7
CMD_HASH_END = 8
CMD_CANCEL_TPM_CMD = 9
CMD_STORE_VOLATILE = 10
CMD_RESET_TPMESTABLISHED = 11
CMD_GET_STATEBLOB = 12
CMD_SET_STATEBLOB = 13
CMD_STOP = 14
CMD_GET_CONFIG = 15
CMD_SET_DATAFD = 16
CMD_SET_BUFFERSIZE = 17
CMD_GET_INFO = 18

# CMD_INIT's flag: drop the volatile state instead of resuming it.
INIT_FLAG_DELETE_VOLATILE = 1

_TIMEOUT = 10.0


def _command(path: Path, code: int, payload: bytes = b"") -> bytes:
    """Send one control command and return the response after its result code."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_TIMEOUT)
        try:
            sock.connect(str(path))
            sock.sendall(struct.pack(">I", code) + payload)
            response = sock.recv(4096)
        except OSError as exc:
            raise TpmError(f"swtpm control channel {path}: {exc}") from exc
    if len(response) < 4:
        raise TpmError(
            f"swtpm control channel {path}: short response to command {code}"
        )
    (result,) = struct.unpack_from(">I", response)
    if result != 0:
        raise TpmError(f"swtpm control command {code} failed", rc=result)
    return response[4:]


def shutdown(path: Path) -> None:
    """CMD_SHUTDOWN: swtpm writes its state and exits."""
    _command(path, CMD_SHUTDOWN)


def init(path: Path, delete_volatile: bool = False) -> None:
    """CMD_INIT: a power cycle (_TPM_Init); PCR allocation changes take effect."""
    flags = INIT_FLAG_DELETE_VOLATILE if delete_volatile else 0
    _command(path, CMD_INIT, struct.pack(">I", flags))
