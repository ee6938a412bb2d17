"""TPM 2.0 command framing: one command out, one response back, on a TCTI.

Every command cvtpm sends, but one, is authorized by the empty password
(TPM_RS_PW) or by nothing, so it needs no HMAC, no nonces and no object names.
Those commands are framed here (TPM 2.0 Part 1, section 18.5; Part 3, section
4.2) and their parameters marshaled with tpm2-pytss's types. Going through
ESAPI instead costs several digests per command for its name bookkeeping, and
the OpenSSL back end of tss2-esys 3.2 builds a new OpenSSL library context for
each digest (about 0.36 ms every time): most of what manufacturing a vTPM
cost. The one command with a policy session, TPM2_ActivateCredential, still
goes through ESAPI (TpmClient.activate_credential).

A command's time is mostly the TPM's (a key derived from a seed, a state file
written), during which the caller's CPU is free: work of its own handed to
`CommandChannel.meanwhile` runs then, between sending the next command and
reading its response.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import TPM2_RC, TPM2_RH, TPM2_ST
from tpm2_pytss.TCTI import TCTI

from cvtpm.errors import ParseError, TpmError
from cvtpm.tpm._cursor import Cursor, marshal_u16, marshal_u32

# TPMS_AUTH_COMMAND for the empty password (Part 1, section 19.8.4): the
# password session handle, an empty nonce, no attributes, an empty password.
_PASSWORD_AUTH = marshal_u32(TPM2_RH.PW) + marshal_u16(0) + b"\x00" + marshal_u16(0)
_HEADER_SIZE = 10

# Response codes after which the TPM wants the same command again (Part 2,
# section 6.6.3), as ESAPI resubmits them; a few times, then the code stands.
_RESUBMIT = (TPM2_RC.RETRY, TPM2_RC.TESTING, TPM2_RC.YIELDED)
_RESUBMIT_LIMIT = 5


@dataclass(frozen=True)
class Response:
    """A successful response: its handles, then its parameter area."""

    handles: tuple[int, ...]
    parameters: Cursor


def response_code(rc: int) -> int:
    """The error of a response code without its handle/parameter/session number."""
    return int(TSS2_Exception(rc).error)


class Overlapped:
    """Work of the caller's, run while the TPM executes a command: its result
    or its error, kept until asked for."""

    def __init__(self, work: Callable[..., Any], *args: Any):
        self._work = work
        self._args = args
        self._ran = False
        self._value: Any = None
        self._error: BaseException | None = None

    @property
    def error(self) -> BaseException | None:
        """What the work raised, if it ran and failed."""
        return self._error

    def run(self) -> None:
        """Do the work, once. Whatever it raises, an interrupt included, is
        kept for `result`, not raised here: the command it overlaps must still
        be answered and read, or the TCTI is left waiting for that answer."""
        if self._ran:
            return
        self._ran = True
        try:
            self._value = self._work(*self._args)
        except BaseException as exc:
            self._error = exc

    def result(self) -> Any:
        """What the work returned (done now if no command ran meanwhile), or
        its error raised."""
        self.run()
        if self._error is not None:
            raise self._error
        return self._value


class CommandChannel:
    """Sends framed commands on one TCTI and parses what comes back."""

    def __init__(self, tcti: TCTI):
        self.tcti = tcti
        # Run once the next command is on its way to the TPM (see Overlapped).
        self.meanwhile: Overlapped | None = None

    def execute(
        self,
        command: str,
        code: int,
        handles: tuple[int, ...] = (),
        parameters: bytes = b"",
        *,
        authorized: int = 0,
        response_handles: int = 0,
    ) -> Response:
        """Run `command` (its Part 3 name, for errors); the first `authorized`
        handles are authorized by the empty password. TPM errors raise TpmError."""
        body = b"".join(marshal_u32(handle) for handle in handles)
        if authorized:
            area = _PASSWORD_AUTH * authorized
            body += marshal_u32(len(area)) + area
        body += parameters
        tag = TPM2_ST.SESSIONS if authorized else TPM2_ST.NO_SESSIONS
        framed = (
            marshal_u16(tag)
            + marshal_u32(_HEADER_SIZE + len(body))
            + marshal_u32(code)
            + body
        )

        for _ in range(_RESUBMIT_LIMIT):
            self._send(command, framed)
            if self.meanwhile is not None:
                work, self.meanwhile = self.meanwhile, None
                work.run()
            raw = self._receive(command)
            reply = Cursor(raw, f"the TPM's response to {command}")
            with reading(command):
                reply_tag = reply.u16("tag")
                size = reply.u32("responseSize")
                rc = reply.u32("responseCode")
            if size != len(raw):
                raise TpmError(
                    f"{command}: the response says {size} bytes but has {len(raw)}"
                )
            if reply_tag not in (TPM2_ST.SESSIONS, TPM2_ST.NO_SESSIONS):
                raise TpmError(f"{command}: the response's tag is {reply_tag:#x}")
            if rc == TPM2_RC.SUCCESS or response_code(rc) not in _RESUBMIT:
                break
        if rc != TPM2_RC.SUCCESS:
            raise TpmError(f"{command} failed: {TSS2_Exception(rc)}", rc=rc)
        if authorized and reply_tag != TPM2_ST.SESSIONS:
            raise TpmError(
                f"{command}: an authorized command's response has no sessions"
            )

        with reading(command):
            out = tuple(reply.u32("handle") for _ in range(response_handles))
            if reply_tag == TPM2_ST.SESSIONS:
                # The parameter area is sized; the password sessions' (empty)
                # acknowledgements follow it and carry nothing to check.
                size = reply.u32("parameterSize")
                reply = Cursor(reply.take(size, "parameters"), reply.what)
        return Response(out, reply)

    def _send(self, command: str, framed: bytes) -> None:
        try:
            self.tcti.transmit(framed)
        except TSS2_Exception as exc:
            raise TpmError(f"{command} failed: {exc}", rc=int(exc.rc)) from exc

    def _receive(self, command: str) -> bytes:
        try:
            return bytes(self.tcti.receive())
        except TSS2_Exception as exc:
            raise TpmError(f"{command} failed: {exc}", rc=int(exc.rc)) from exc

    def close(self) -> None:
        """Finalize the TCTI (for swtpm: nothing stays connected between commands)."""
        self.tcti.close()


@contextmanager
def reading(command: str) -> Iterator[None]:
    """Turn a ParseError while reading `command`'s response into a TpmError."""
    try:
        yield
    except ParseError as exc:
        raise TpmError(f"{command}: malformed response ({exc})") from exc


def unmarshal(reply: Cursor, structure, field: str):
    """The next `structure` (a tpm2-pytss type) in `reply`, moving past it."""
    try:
        value, used = structure.unmarshal(reply.data[reply.offset :])
    except TSS2_Exception as exc:
        raise TpmError(f"{reply.what}: malformed {field} ({exc})") from exc
    reply.offset += used
    return value
