"""Which swtpm control-channel commands a container may send, and how they are framed.

swtpm's control channel (swtpm's `include/swtpm/tpm_ioctl.h` and man page
swtpm-ioctls) carries out-of-band operations: power cycles (CMD_INIT), stopping
the TPM, reading and writing its whole state, resetting the establishment bit,
changing locality. A container may use none of these: CMD_INIT followed by
TPM2_Startup(CLEAR) would zero PCR 10, and the state blobs hold every secret of the
vTPM. A client library still needs a few harmless queries: tpm2-tss' tcti-swtpm
sends CMD_SET_LOCALITY with locality 0 when it opens (Tss2_Tcti_Swtpm_Init), and
tools ask for capabilities. Those are forwarded; everything else is answered by the
filter with a TPM 1.2-style result code, as swtpm itself answers on this channel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CMD_GET_CAPABILITY = 0x01
CMD_INIT = 0x02
CMD_SHUTDOWN = 0x03
CMD_GET_TPMESTABLISHED = 0x04
CMD_SET_LOCALITY = 0x05
CMD_HASH_START = 0x06
CMD_HASH_DATA = 0x07
CMD_HASH_END = 0x08
CMD_CANCEL_TPM_CMD = 0x09
CMD_STORE_VOLATILE = 0x0A
CMD_RESET_TPMESTABLISHED = 0x0B
CMD_GET_STATEBLOB = 0x0C
CMD_SET_STATEBLOB = 0x0D
CMD_STOP = 0x0E
CMD_GET_CONFIG = 0x0F
CMD_SET_DATAFD = 0x10
CMD_SET_BUFFERSIZE = 0x11
CMD_GET_INFO = 0x12

# TPM 1.2 result codes (TPM 1.2 Part 2, section 16), which swtpm's control channel
# returns in the first four bytes of every response.
TPM_SUCCESS = 0x00
TPM_DISABLED_CMD = 0x08
TPM_BAD_LOCALITY = 0x3D

# PTM_CAP_* bits of CMD_GET_CAPABILITY for the commands a container may use; the
# filter clears every other bit so a client does not try what will be refused.
PTM_CAP_GET_TPMESTABLISHED = 1 << 2
PTM_CAP_SET_LOCALITY = 1 << 3
PTM_CAP_GET_CONFIG = 1 << 11
PTM_CAP_SET_BUFFERSIZE = 1 << 13
PTM_CAP_GET_INFO = 1 << 14
ALLOWED_CAPS = (
    PTM_CAP_GET_TPMESTABLISHED
    | PTM_CAP_SET_LOCALITY
    | PTM_CAP_GET_CONFIG
    | PTM_CAP_SET_BUFFERSIZE
    | PTM_CAP_GET_INFO
)

# Request payload sizes after the four-byte command code of the allowed commands.
REQUEST_PAYLOAD = {
    CMD_GET_CAPABILITY: 0,
    CMD_GET_TPMESTABLISHED: 0,
    CMD_SET_LOCALITY: 1,
    CMD_GET_CONFIG: 0,
    CMD_SET_BUFFERSIZE: 4,
    CMD_GET_INFO: 16,
}

# Response sizes after the four-byte result when the result is TPM_SUCCESS; on an
# error swtpm sends the result alone. CMD_GET_INFO is followed by totlength and
# length, then `length` bytes.
RESPONSE_TAIL = {
    CMD_GET_CAPABILITY: 4,
    CMD_GET_TPMESTABLISHED: 4,
    CMD_SET_LOCALITY: 0,
    CMD_GET_CONFIG: 4,
    CMD_SET_BUFFERSIZE: 12,
    CMD_GET_INFO: 8,
}

ALLOWED_LOCALITY = 0


@dataclass(frozen=True)
class CtrlDecision:
    """Forward a control command, or answer it with `result` and close."""

    forward: bool
    result: int = TPM_SUCCESS
    reason: str = "ctrl.allowed"


def payload_size(code: int) -> int | None:
    """How many request bytes follow `code`, or None for a command that is refused."""
    return REQUEST_PAYLOAD.get(code)


def check_ctrl(code: int, payload: bytes) -> CtrlDecision:
    """Decide on one control command whose payload has been read in full."""
    if code not in REQUEST_PAYLOAD:
        return CtrlDecision(False, TPM_DISABLED_CMD, "ctrl.disabled_command")

    # Localities above 0 may extend and reset the DRTM PCRs 17-22 (TCG PC Client
    # Platform TPM Profile, section 4.6); a container stays at locality 0.
    if code == CMD_SET_LOCALITY and payload[0] != ALLOWED_LOCALITY:
        return CtrlDecision(False, TPM_BAD_LOCALITY, "ctrl.locality")

    # A buffer size of 0 only asks for the current size; any other value changes
    # the TPM's command size for every client, the host included.
    if code == CMD_SET_BUFFERSIZE and struct.unpack(">I", payload)[0] != 0:
        return CtrlDecision(False, TPM_DISABLED_CMD, "ctrl.set_buffersize")

    return CtrlDecision(True)


def refusal(result: int) -> bytes:
    """The four-byte control response carrying only `result`."""
    return struct.pack(">I", result)


def mask_capabilities(response: bytes) -> bytes:
    """Clear the capability bits of commands the filter refuses."""
    if len(response) < 8:
        return response
    caps = struct.unpack_from(">I", response, 4)[0]
    return response[:4] + struct.pack(">I", caps & ALLOWED_CAPS) + response[8:]
