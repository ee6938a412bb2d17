"""Command framing against a scripted TCTI: the bytes sent, and every kind of reply.

A scripted TCTI is enough here: what is tested is our framing and parsing
(TPM 2.0 Part 1, section 18), not a TPM. The same commands go to a real
swtpm in test_client.py and in every vTPM test.
"""

from __future__ import annotations

import struct

import pytest
from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import TPM2_CC, TPM2_RC, TPM2_RH, TPM2_ST

from cvtpm.errors import TpmError
from cvtpm.tpm.command import CommandChannel, Overlapped

# The password session with an empty password, as Part 1, 19.8.4 lays it out.
PASSWORD = struct.pack(">IHBH", 0x40000009, 0, 0, 0)


class ScriptedTcti:
    """Records what is transmitted and answers with the next scripted reply."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.sent: list[bytes] = []

    def transmit(self, command: bytes) -> None:
        self.sent.append(bytes(command))

    def receive(self) -> bytes:
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def response(rc: int = 0, body: bytes = b"", tag: int = TPM2_ST.NO_SESSIONS) -> bytes:
    return struct.pack(">HII", tag, 10 + len(body), rc) + body


def test_an_authorized_command_is_framed_with_a_password_session():
    """Header, handles, the sized authorization area, then the parameters."""
    tcti = ScriptedTcti(response(tag=TPM2_ST.SESSIONS, body=b"\0\0\0\0" + PASSWORD[4:]))
    CommandChannel(tcti).execute(
        "TPM2_NV_WriteLock",
        TPM2_CC.NV_WriteLock,
        (TPM2_RH.PLATFORM, 0x01C0000A),
        authorized=1,
    )
    body = struct.pack(">II", 0x4000000C, 0x01C0000A)
    body += struct.pack(">I", len(PASSWORD)) + PASSWORD
    assert tcti.sent == [struct.pack(">HII", 0x8002, 10 + len(body), 0x138) + body]


def test_a_command_without_sessions_has_no_authorization_area():
    tcti = ScriptedTcti(response())
    CommandChannel(tcti).execute(
        "TPM2_FlushContext", TPM2_CC.FlushContext, (), b"\x80\x00\x00\x00"
    )
    assert tcti.sent == [bytes.fromhex("8001 0000000e 00000165 80000000")]


def test_the_parameter_area_ends_where_its_size_says():
    """Response handles first, then parameterSize; the session acks after it."""
    params = b"\x00\x03abc"
    body = struct.pack(">II", 0x80000001, len(params)) + params + PASSWORD[4:]
    tcti = ScriptedTcti(response(tag=TPM2_ST.SESSIONS, body=body))
    reply = CommandChannel(tcti).execute(
        "TPM2_CreatePrimary", TPM2_CC.CreatePrimary, (TPM2_RH.ENDORSEMENT,),
        authorized=1, response_handles=1,
    )  # fmt: skip
    assert reply.handles == (0x80000001,)
    assert reply.parameters.tpm2b("x") == b"abc"
    reply.parameters.done()


def test_a_tpm_error_names_the_command_and_carries_the_code():
    tcti = ScriptedTcti(response(rc=0x1C4))
    with pytest.raises(
        TpmError, match=r"TPM2_Startup failed: .*value is out of range"
    ) as err:
        CommandChannel(tcti).execute("TPM2_Startup", TPM2_CC.Startup, (), b"\0\1")
    assert err.value.rc == 0x1C4


def test_retry_is_resubmitted_then_succeeds():
    tcti = ScriptedTcti(
        response(rc=TPM2_RC.RETRY), response(rc=TPM2_RC.YIELDED), response()
    )
    CommandChannel(tcti).execute("TPM2_Startup", TPM2_CC.Startup, (), b"\0\0")
    assert len(tcti.sent) == 3 and len(set(tcti.sent)) == 1


def test_retry_without_end_stops_and_reports_it():
    tcti = ScriptedTcti(*[response(rc=TPM2_RC.RETRY)] * 5)
    with pytest.raises(TpmError, match="TPM2_Startup failed") as err:
        CommandChannel(tcti).execute("TPM2_Startup", TPM2_CC.Startup, (), b"\0\0")
    assert err.value.rc == TPM2_RC.RETRY
    assert len(tcti.sent) == 5


@pytest.mark.parametrize(
    "reply, message",
    [
        (b"\x80\x01\x00\x00", "malformed response"),
        (response() + b"x", "says 10 bytes but has 11"),
        (struct.pack(">HII", 0x8002, 12, 0) + b"\0\0", "malformed response"),
    ],
    ids=["short header", "size mismatch", "no parameterSize"],
)
def test_a_malformed_response_is_a_tpm_error(reply, message):
    with pytest.raises(TpmError, match=message):
        CommandChannel(ScriptedTcti(reply)).execute(
            "TPM2_Startup", TPM2_CC.Startup, (), b"\0\0", authorized=1
        )


def test_a_failing_tcti_is_a_tpm_error_naming_the_command():
    tcti = ScriptedTcti(TSS2_Exception(0xA000A))  # TSS2_TCTI_RC_IO_ERROR
    with pytest.raises(
        TpmError, match=r"TPM2_PCR_Extend failed.*\(TSS rc 0xa000a\)"
    ) as err:
        CommandChannel(tcti).execute("TPM2_PCR_Extend", TPM2_CC.PCR_Extend, (10,))
    assert err.value.rc == 0xA000A


class OrderedTcti(ScriptedTcti):
    """A scripted TCTI that also notes, in `log`, when it sends and receives."""

    def __init__(self, log, *replies):
        super().__init__(*replies)
        self.log = log

    def transmit(self, command: bytes) -> None:
        self.log.append("transmit")
        super().transmit(command)

    def receive(self) -> bytes:
        self.log.append("receive")
        return super().receive()


def test_overlapped_work_runs_between_sending_and_receiving():
    """The work runs while the TPM has the command, once, and not again for
    the command that follows."""
    log = []
    channel = CommandChannel(OrderedTcti(log, response(), response()))
    job = Overlapped(lambda: log.append("work") or 42)

    channel.meanwhile = job
    channel.execute("TPM2_Startup", TPM2_CC.Startup, (), b"\0\0")
    channel.execute("TPM2_Startup", TPM2_CC.Startup, (), b"\0\0")

    assert log == ["transmit", "work", "receive", "transmit", "receive"]
    assert job.result() == 42 and log.count("work") == 1


def test_overlapped_work_runs_once_when_the_command_is_resubmitted():
    """A RETRY sends the command again; the work is not done again."""
    log = []
    channel = CommandChannel(OrderedTcti(log, response(rc=TPM2_RC.RETRY), response()))
    channel.meanwhile = Overlapped(lambda: log.append("work"))

    channel.execute("TPM2_Startup", TPM2_CC.Startup, (), b"\0\0")

    assert log == ["transmit", "work", "receive", "transmit", "receive"]


def test_an_error_of_overlapped_work_waits_for_result():
    """The command is still answered and read; the work's error comes from result()."""
    tcti = ScriptedTcti(response())
    channel = CommandChannel(tcti)
    job = Overlapped(int, "not a number")

    channel.meanwhile = job
    channel.execute("TPM2_Startup", TPM2_CC.Startup, (), b"\0\0")

    assert tcti.replies == []
    with pytest.raises(ValueError, match="not a number"):
        job.result()


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt, which pytest would take as its own."""


def test_an_interrupt_in_overlapped_work_still_lets_the_answer_be_read():
    """Even a BaseException waits for result(): the TCTI must not be left
    waiting for an answer nobody reads."""
    tcti = ScriptedTcti(response(), response())
    channel = CommandChannel(tcti)

    def interrupted():
        raise Interrupt

    job = Overlapped(interrupted)
    channel.meanwhile = job
    channel.execute("TPM2_Startup", TPM2_CC.Startup, (), b"\0\0")

    assert isinstance(job.error, Interrupt)
    with pytest.raises(Interrupt):
        job.result()
    channel.execute("TPM2_Startup", TPM2_CC.Startup, (), b"\0\0")
    assert tcti.replies == []


def test_overlapped_work_with_no_command_runs_at_result():
    """A block that sent nothing still gets its work done, when asked."""
    ran = []
    job = Overlapped(ran.append, "late")

    assert ran == []
    job.result()
    assert ran == ["late"]
