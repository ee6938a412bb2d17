"""The command and control-channel policy of the TPM filter, on hand-built bytes."""

from __future__ import annotations

import struct

import pytest
from tpm2_pytss.constants import TPM2_CC, TPM2_RC

from cvtpm.errors import ParseError
from cvtpm.runtime import ctrl_commands as ctrl
from cvtpm.runtime import tpm_commands as tc
from cvtpm.runtime.tpm_commands import FilterPolicy, Verdict, check_command

POLICY = FilterPolicy()
PASSWORD_SESSION = struct.pack(">IHBH", 0x40000009, 0, 0, 0)  # TPM_RS_PW, empty


def command(code: int, handles=(), parameters=b"", sessions: bytes | None = None):
    """Marshal a TPM 2.0 command: header, handles, optional sessions, parameters."""
    body = b"".join(struct.pack(">I", h) for h in handles)
    tag = tc.TPM_ST_NO_SESSIONS
    if sessions is not None:
        tag = tc.TPM_ST_SESSIONS
        body += struct.pack(">I", len(sessions)) + sessions
    body += parameters
    return struct.pack(">HII", tag, tc.HEADER_SIZE + len(body), code) + body


def pcr_extend(pcr: int) -> bytes:
    """TPM2_PCR_Extend of one sha256 digest into `pcr`."""
    digests = struct.pack(">IH", 1, 0x000B) + bytes(32)
    return command(tc.TPM_CC_PCR_Extend, [pcr], digests, PASSWORD_SESSION)


def test_command_codes_match_tpm2_pytss():
    """Every command and response code the filter names has the value of the spec."""
    for name in dir(tc):
        if name.startswith("TPM_CC_"):
            assert getattr(tc, name) == getattr(TPM2_CC, name[7:]), name
        if name.startswith("TPM_RC_"):
            assert getattr(tc, name) == getattr(TPM2_RC, name[7:]), name


def test_extend_of_protected_pcr_is_refused_with_locality():
    """Extending PCR 10 is refused with TPM_RC_LOCALITY; PCR 16 is forwarded."""
    refused = check_command(pcr_extend(10), POLICY)
    assert refused.verdict is Verdict.REFUSE
    assert refused.rc == tc.TPM_RC_LOCALITY
    assert refused.reason == "tpm.protected_pcr"

    assert check_command(pcr_extend(16), POLICY).verdict is Verdict.FORWARD


@pytest.mark.parametrize(
    "code",
    [
        tc.TPM_CC_PCR_Event,
        tc.TPM_CC_PCR_Reset,
        tc.TPM_CC_PCR_SetAuthValue,
        tc.TPM_CC_EventSequenceComplete,
    ],
)
def test_every_pcr_changing_command_is_checked(code):
    """PCR_Event, PCR_Reset, PCR_SetAuthValue, EventSequenceComplete on PCR 10 fail."""
    handles = [10, 0x80000001] if code == tc.TPM_CC_EventSequenceComplete else [10]
    decision = check_command(command(code, handles, b"\0\0", PASSWORD_SESSION), POLICY)
    assert decision.rc == tc.TPM_RC_LOCALITY


def test_protected_pcrs_are_configurable():
    """A policy protecting PCRs 10 and 11 refuses both and lets PCR 10 alone pass."""
    policy = FilterPolicy(protected_pcrs=frozenset({10, 11}))
    assert check_command(pcr_extend(11), policy).verdict is Verdict.REFUSE
    assert check_command(pcr_extend(11), POLICY).verdict is Verdict.FORWARD
    with pytest.raises(ValueError):
        FilterPolicy(protected_pcrs=frozenset({32}))


def test_startup_and_disabled_commands():
    """Startup gets TPM_RC_INITIALIZE; reset and identity commands are not offered."""
    startup = check_command(command(tc.TPM_CC_Startup, parameters=b"\0\0"), POLICY)
    assert startup.rc == tc.TPM_RC_INITIALIZE

    for code in (
        tc.TPM_CC_Shutdown,
        tc.TPM_CC_Clear,
        tc.TPM_CC_ChangeEPS,
        tc.TPM_CC_PCR_Allocate,
        tc.TPM_CC_HierarchyControl,
    ):
        decision = check_command(command(code, [0x4000000C]), POLICY)
        assert decision.rc == tc.TPM_RC_COMMAND_CODE, hex(code)


def test_ek_certificate_index_is_locked():
    """Writing or deleting the EK certificate NV index fails; other indices pass."""
    for code in (tc.TPM_CC_NV_Write, tc.TPM_CC_NV_UndefineSpace, tc.TPM_CC_NV_ReadLock):
        decision = check_command(
            command(code, [0x40000001, 0x01C00002], b"\0\0", PASSWORD_SESSION), POLICY
        )
        assert decision.rc == tc.TPM_RC_NV_LOCKED

    other = command(tc.TPM_CC_NV_Write, [0x40000001, 0x01500000], b"", PASSWORD_SESSION)
    assert check_command(other, POLICY).verdict is Verdict.FORWARD


def test_evict_control_of_ek_and_ak_is_refused():
    """Evicting the EK, or persisting an object at the AK's handle, is refused."""
    owner = 0x40000001
    evict_ek = command(
        tc.TPM_CC_EvictControl,
        [owner, 0x81010001],
        b"\x81\x01\x00\x01",
        PASSWORD_SESSION,
    )
    assert check_command(evict_ek, POLICY).rc == tc.TPM_RC_NV_LOCKED

    squat_ak = command(
        tc.TPM_CC_EvictControl,
        [owner, 0x80000000],
        b"\x81\x01\x00\x03",
        PASSWORD_SESSION,
    )
    assert check_command(squat_ak, POLICY).rc == tc.TPM_RC_NV_LOCKED

    own_key = command(
        tc.TPM_CC_EvictControl,
        [owner, 0x80000000],
        b"\x81\x00\x00\x07",
        PASSWORD_SESSION,
    )
    assert check_command(own_key, POLICY).verdict is Verdict.FORWARD


def test_every_truncation_of_a_checked_command_is_refused_or_rejected():
    """No prefix of an EvictControl or PCR_Extend command is ever forwarded."""
    for full in (
        pcr_extend(10),
        command(tc.TPM_CC_EvictControl, [1, 0x81010001], b"\x81\x01\0\1", b"\0" * 9),
    ):
        for cut in range(len(full)):
            prefix = full[:cut]
            if cut < tc.HEADER_SIZE:
                with pytest.raises(ParseError):
                    check_command(prefix, POLICY)
                continue
            resized = prefix[:2] + struct.pack(">I", cut) + prefix[6:]
            decision = check_command(resized, POLICY)
            assert decision.verdict is Verdict.REFUSE, cut
            assert decision.rc in (tc.TPM_RC_COMMAND_SIZE, tc.TPM_RC_LOCALITY)
            assert check_command(prefix, POLICY).rc == tc.TPM_RC_COMMAND_SIZE


def test_bad_tag_and_size():
    """A foreign tag gets TPM_RC_BAD_TAG under TPM_ST_RSP_COMMAND; sizes are bounded."""
    tpm12 = struct.pack(">HII", 0x00C1, 10, 0x65)
    decision = check_command(tpm12, POLICY)
    assert decision.rc == tc.TPM_RC_BAD_TAG
    assert tc.error_response(decision.rc) == struct.pack(">HII", 0x00C4, 10, 0x1E)

    header = tc.parse_header(struct.pack(">HII", 0x8001, 1 << 20, 0x17B))
    assert tc.check_header(header, POLICY).rc == tc.TPM_RC_COMMAND_SIZE
    header = tc.parse_header(struct.pack(">HII", 0x8001, 9, 0x17B))
    assert tc.check_header(header, POLICY).rc == tc.TPM_RC_COMMAND_SIZE


def test_error_response_layout():
    """A refusal is a ten-byte TPM_ST_NO_SESSIONS response with the code."""
    assert tc.error_response(tc.TPM_RC_LOCALITY) == bytes.fromhex(
        "80010000000a00000907"
    )


def test_ctrl_allows_only_queries_and_locality_zero():
    """Only queries and SET_LOCALITY(0) pass the control channel."""
    assert ctrl.check_ctrl(ctrl.CMD_SET_LOCALITY, b"\0").forward
    assert ctrl.check_ctrl(ctrl.CMD_GET_CAPABILITY, b"").forward
    assert ctrl.check_ctrl(ctrl.CMD_SET_BUFFERSIZE, bytes(4)).forward

    locality = ctrl.check_ctrl(ctrl.CMD_SET_LOCALITY, b"\3")
    assert (locality.forward, locality.result) == (False, ctrl.TPM_BAD_LOCALITY)
    resize = ctrl.check_ctrl(ctrl.CMD_SET_BUFFERSIZE, struct.pack(">I", 8192))
    assert not resize.forward

    for code in (
        ctrl.CMD_INIT,
        ctrl.CMD_SHUTDOWN,
        ctrl.CMD_STOP,
        ctrl.CMD_GET_STATEBLOB,
        ctrl.CMD_SET_STATEBLOB,
        ctrl.CMD_RESET_TPMESTABLISHED,
        ctrl.CMD_HASH_START,
        ctrl.CMD_STORE_VOLATILE,
        ctrl.CMD_SET_DATAFD,
        ctrl.CMD_CANCEL_TPM_CMD,
        0x7F,
    ):
        assert ctrl.payload_size(code) is None
        assert ctrl.check_ctrl(code, b"").result == ctrl.TPM_DISABLED_CMD


def test_capabilities_are_masked():
    """CMD_GET_CAPABILITY's answer keeps only the bits of allowed commands."""
    masked = ctrl.mask_capabilities(bytes.fromhex("000000000000ffff"))
    caps = struct.unpack(">I", masked[4:])[0]
    assert caps == ctrl.ALLOWED_CAPS
    assert not caps & 1  # PTM_CAP_INIT
