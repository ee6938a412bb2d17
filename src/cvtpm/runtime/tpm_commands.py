"""Which TPM 2.0 commands a container may send to its vTPM, decided from the bytes.

A container talks to its vTPM through a filter (`cvtpm.runtime.tpm_filter`); the
filter reads each command's header and handle area (TPM 2.0 Part 1, section 18
"Command/Response Structures"; Part 3 for each command's handles) and asks
`check_command` whether to forward it. A refused command is answered by the filter
itself with a ten-byte error response, as a TPM would answer a command it will not
run, so a client sees an ordinary TPM response code instead of a dropped connection.

What is refused, and with which response code:

- Extending, resetting or setting the auth of a protected PCR (PCR 10, where the
  container's measurements go): TPM_RC_LOCALITY, which is what a TPM answers when a
  PCR may not be changed from the caller's locality (Part 3, TPM2_PCR_Extend and
  TPM2_PCR_Reset). A container may never change the PCR its measurement list is
  replayed against.
- Commands that would reset the TPM, change which PCR banks exist, or destroy or
  replace its identity (the EK and its certificate): TPM_RC_COMMAND_CODE, the
  answer of a TPM that does not offer a command.
- TPM2_Startup: TPM_RC_INITIALIZE, what a TPM that already started answers; only
  the host starts a vTPM, because TPM2_Startup(CLEAR) after a power cycle is how
  PCRs are cleared.
- Writing, locking or deleting the EK certificate NV indices, or evicting the
  persistent EK and AK: TPM_RC_NV_LOCKED.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum

from cvtpm.errors import ParseError

# TPM 2.0 Part 2, section 6.9 (TPM_ST).
TPM_ST_RSP_COMMAND = 0x00C4
TPM_ST_NO_SESSIONS = 0x8001
TPM_ST_SESSIONS = 0x8002

# TPM 2.0 Part 2, section 6.6 (TPM_RC).
TPM_RC_SUCCESS = 0x000
TPM_RC_BAD_TAG = 0x01E
TPM_RC_INITIALIZE = 0x100
TPM_RC_FAILURE = 0x101
TPM_RC_COMMAND_SIZE = 0x142
TPM_RC_COMMAND_CODE = 0x143
TPM_RC_NV_LOCKED = 0x148
TPM_RC_LOCALITY = 0x907

# TPM 2.0 Part 2, section 6.5 (TPM_CC): the commands the filter looks into.
TPM_CC_NV_UndefineSpaceSpecial = 0x11F
TPM_CC_EvictControl = 0x120
TPM_CC_HierarchyControl = 0x121
TPM_CC_NV_UndefineSpace = 0x122
TPM_CC_ChangeEPS = 0x124
TPM_CC_ChangePPS = 0x125
TPM_CC_Clear = 0x126
TPM_CC_ClearControl = 0x127
TPM_CC_HierarchyChangeAuth = 0x129
TPM_CC_PCR_Allocate = 0x12B
TPM_CC_PCR_SetAuthPolicy = 0x12C
TPM_CC_SetPrimaryPolicy = 0x12E
TPM_CC_FieldUpgradeStart = 0x12F
TPM_CC_NV_Increment = 0x134
TPM_CC_NV_SetBits = 0x135
TPM_CC_NV_Extend = 0x136
TPM_CC_NV_Write = 0x137
TPM_CC_NV_WriteLock = 0x138
TPM_CC_NV_ChangeAuth = 0x13B
TPM_CC_PCR_Event = 0x13C
TPM_CC_PCR_Reset = 0x13D
TPM_CC_FieldUpgradeData = 0x141
TPM_CC_Startup = 0x144
TPM_CC_Shutdown = 0x145
TPM_CC_NV_ReadLock = 0x14F
TPM_CC_PCR_Extend = 0x182
TPM_CC_PCR_SetAuthValue = 0x183
TPM_CC_EventSequenceComplete = 0x185

HEADER_SIZE = 10
HANDLE_SIZE = 4

# libtpms' command buffer (TPM_BUFFER_MAX); swtpm refuses anything larger anyway.
DEFAULT_MAX_COMMAND_SIZE = 4096

# Commands that reset the TPM, change its PCR banks, its hierarchies' auth and
# enables, or its seeds (ChangeEPS makes a new EK, so its certificate becomes a
# lie); none has a use inside a container whose TPM the host attests.
DISABLED_COMMANDS = frozenset(
    {
        TPM_CC_Shutdown,
        TPM_CC_PCR_Allocate,
        TPM_CC_PCR_SetAuthPolicy,
        TPM_CC_Clear,
        TPM_CC_ClearControl,
        TPM_CC_ChangeEPS,
        TPM_CC_ChangePPS,
        TPM_CC_HierarchyControl,
        TPM_CC_HierarchyChangeAuth,
        TPM_CC_SetPrimaryPolicy,
        TPM_CC_FieldUpgradeStart,
        TPM_CC_FieldUpgradeData,
    }
)

# Which handle of the handle area names a PCR, per Part 3's command tables.
PCR_HANDLE_INDEX = {
    TPM_CC_PCR_Extend: 0,
    TPM_CC_PCR_Event: 0,
    TPM_CC_PCR_Reset: 0,
    TPM_CC_PCR_SetAuthValue: 0,
    TPM_CC_EventSequenceComplete: 0,
}

# Which handle names an NV index, for the commands that change or lock an index.
NV_HANDLE_INDEX = {
    TPM_CC_NV_UndefineSpace: 1,
    TPM_CC_NV_UndefineSpaceSpecial: 0,
    TPM_CC_NV_Write: 1,
    TPM_CC_NV_Increment: 1,
    TPM_CC_NV_Extend: 1,
    TPM_CC_NV_SetBits: 1,
    TPM_CC_NV_WriteLock: 1,
    TPM_CC_NV_ReadLock: 1,
    TPM_CC_NV_ChangeAuth: 0,
}

# TPM_HT_PCR handles are the PCR numbers themselves (Part 2, section 7.2).
PCR_HANDLE_LAST = 0x0000001F

# TCG EK Credential Profile 2.x, section 2.2.1.4: the NV range of EK certificates,
# nonces and templates; TCG "Registry of Reserved TPM 2.0 Handles": the persistent
# range of endorsement primary keys (RSA EK 0x81010001, ECC EK 0x81010002, and
# cvtpm's AK at 0x81010003).
EK_NV_RANGE = range(0x01C00000, 0x01C08000)
ENDORSEMENT_PERSISTENT_RANGE = range(0x81010000, 0x81020000)


class Verdict(Enum):
    """What the filter does with one command."""

    FORWARD = "forward"
    REFUSE = "refuse"


@dataclass(frozen=True)
class CommandHeader:
    """The fixed ten bytes that start every TPM 2.0 command (Part 1, section 18.2)."""

    tag: int
    size: int
    code: int


@dataclass(frozen=True)
class Decision:
    """The filter's answer for one command: forward it, or refuse with `rc`."""

    verdict: Verdict
    rc: int = TPM_RC_SUCCESS
    reason: str = "tpm.allowed"


@dataclass(frozen=True)
class FilterPolicy:
    """What a container's filter protects: PCRs, NV indices and persistent handles."""

    protected_pcrs: frozenset[int] = frozenset({10})
    protected_nv: tuple[range, ...] = (EK_NV_RANGE,)
    protected_persistent: tuple[range, ...] = (ENDORSEMENT_PERSISTENT_RANGE,)
    max_command_size: int = DEFAULT_MAX_COMMAND_SIZE
    disabled_commands: frozenset[int] = field(default=DISABLED_COMMANDS)

    def __post_init__(self):
        bad = [pcr for pcr in self.protected_pcrs if not 0 <= pcr <= PCR_HANDLE_LAST]
        if bad:
            raise ValueError(f"not a PCR index: {bad}")
        if self.max_command_size < HEADER_SIZE:
            raise ValueError("max_command_size is smaller than a command header")


FORWARD = Decision(Verdict.FORWARD)


def parse_header(data: bytes) -> CommandHeader:
    """Read a command header; raises ParseError when fewer than ten bytes are given."""
    if len(data) < HEADER_SIZE:
        raise ParseError(
            f"TPM command header needs {HEADER_SIZE} bytes, got {len(data)}",
            offset=len(data),
        )
    tag, size, code = struct.unpack_from(">HII", data, 0)
    return CommandHeader(tag=tag, size=size, code=code)


def check_header(header: CommandHeader, policy: FilterPolicy) -> Decision:
    """Refuse a header whose tag or size no TPM accepts, before reading the body."""
    if header.tag not in (TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS):
        return Decision(Verdict.REFUSE, TPM_RC_BAD_TAG, "tpm.bad_tag")

    if not HEADER_SIZE <= header.size <= policy.max_command_size:
        return Decision(Verdict.REFUSE, TPM_RC_COMMAND_SIZE, "tpm.command_size")

    return FORWARD


# TODO: transient handles and sessions are shared by everyone using the vTPM, so a
# container can TPM2_FlushContext an object the daemon loaded a moment ago (its
# quote then fails and must be retried). Matters once the daemon keeps objects
# loaded between commands; a fix is a per-client handle map, like a resource manager.
def check_command(command: bytes, policy: FilterPolicy) -> Decision:
    """Decide whether one complete command may reach the vTPM."""
    header = parse_header(command)
    decision = check_header(header, policy)
    if decision.verdict is Verdict.REFUSE:
        return decision
    if header.size != len(command):
        return Decision(Verdict.REFUSE, TPM_RC_COMMAND_SIZE, "tpm.command_size")

    # 1. Commands that only the host may run.
    if header.code == TPM_CC_Startup:
        return Decision(Verdict.REFUSE, TPM_RC_INITIALIZE, "tpm.startup")
    if header.code in policy.disabled_commands:
        return Decision(Verdict.REFUSE, TPM_RC_COMMAND_CODE, "tpm.disabled_command")

    # 2. Commands that change a PCR named by a handle.
    if header.code in PCR_HANDLE_INDEX:
        handle = _handle(command, PCR_HANDLE_INDEX[header.code])
        if handle is None:
            return Decision(Verdict.REFUSE, TPM_RC_COMMAND_SIZE, "tpm.command_size")
        if handle <= PCR_HANDLE_LAST and handle in policy.protected_pcrs:
            return Decision(Verdict.REFUSE, TPM_RC_LOCALITY, "tpm.protected_pcr")

    # 3. Commands that change, lock or delete an NV index named by a handle.
    if header.code in NV_HANDLE_INDEX:
        handle = _handle(command, NV_HANDLE_INDEX[header.code])
        if handle is None:
            return Decision(Verdict.REFUSE, TPM_RC_COMMAND_SIZE, "tpm.command_size")
        if _within(handle, policy.protected_nv):
            return Decision(Verdict.REFUSE, TPM_RC_NV_LOCKED, "tpm.protected_nv")

    # 4. TPM2_EvictControl removes the persistent object named by its second handle,
    # or persists an object at the handle given as its first parameter (Part 3,
    # section 28.5).
    if header.code == TPM_CC_EvictControl:
        return _check_evict_control(command, header, policy)

    return FORWARD


def error_response(rc: int) -> bytes:
    """A ten-byte TPM response carrying only `rc` (Part 1, section 18.8)."""
    # A bad tag may mean the client speaks TPM 1.2, so the TPM answers with
    # TPM_ST_RSP_COMMAND, which both families read (Part 2, section 6.9).
    tag = TPM_ST_RSP_COMMAND if rc == TPM_RC_BAD_TAG else TPM_ST_NO_SESSIONS
    return struct.pack(">HII", tag, HEADER_SIZE, rc)


def response_size(header: bytes) -> int:
    """The total size announced by a response's header; raises ParseError if short."""
    return parse_header(header).size


def _check_evict_control(
    command: bytes, header: CommandHeader, policy: FilterPolicy
) -> Decision:
    object_handle = _handle(command, 1)
    persistent_handle = _first_parameter_u32(command, header, handles=2)
    if object_handle is None or persistent_handle is None:
        return Decision(Verdict.REFUSE, TPM_RC_COMMAND_SIZE, "tpm.command_size")

    if _within(object_handle, policy.protected_persistent) or _within(
        persistent_handle, policy.protected_persistent
    ):
        return Decision(Verdict.REFUSE, TPM_RC_NV_LOCKED, "tpm.protected_persistent")
    return FORWARD


def _handle(command: bytes, index: int) -> int | None:
    offset = HEADER_SIZE + index * HANDLE_SIZE
    if len(command) < offset + HANDLE_SIZE:
        return None
    return struct.unpack_from(">I", command, offset)[0]


def _first_parameter_u32(
    command: bytes, header: CommandHeader, *, handles: int
) -> int | None:
    # With TPM_ST_SESSIONS the handle area is followed by a UINT32
    # authorizationSize and the sessions, then the parameters (Part 1, 18.2).
    offset = HEADER_SIZE + handles * HANDLE_SIZE
    if header.tag == TPM_ST_SESSIONS:
        if len(command) < offset + 4:
            return None
        offset += 4 + struct.unpack_from(">I", command, offset)[0]
    if len(command) < offset + 4:
        return None
    return struct.unpack_from(">I", command, offset)[0]


def _within(handle: int, ranges: tuple[range, ...]) -> bool:
    return any(handle in r for r in ranges)
