"""The filtered TPM a container talks to: a pair of sockets in front of its vTPM.

Each filter listens on a data socket and on a control socket next to it (the
data path plus ".ctrl", the layout tpm2-tss' tcti-swtpm expects), checks every
command with `cvtpm.runtime.tpm_commands` and `cvtpm.runtime.ctrl_commands`,
forwards what is allowed to the vTPM's own sockets and answers the rest itself.

Commands reach the vTPM one at a time: swtpm serves one data connection at a time,
and the host daemon talks to the same vTPM, so the filter opens a connection per
command (as tcti-swtpm does) under a per-filter lock and closes it again. A client
holding its connection open therefore never blocks the host or other clients.

`cvtpm.runtime.filter_host.FilterHost` runs the filters of many containers on
one asyncio loop in one thread, with a blocking API for a daemon that is not
itself asynchronous; an asynchronous daemon can run `TpmFilter` on its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import struct
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from cvtpm.errors import ConfigError
from cvtpm.runtime import ctrl_commands as ctrl
from cvtpm.runtime import tpm_device
from cvtpm.runtime.tpm_commands import (
    HEADER_SIZE,
    TPM_RC_FAILURE,
    FilterPolicy,
    Verdict,
    check_command,
    check_header,
    error_response,
    parse_header,
)

log = logging.getLogger(__name__)

# Holds a vTPM running while a command is forwarded to it, starting it if it
# was released for being idle (cvtpm.vtpm.idle.IdleReleaser.use).
Lease = Callable[[], AbstractContextManager]

DATA_SOCKET = "tpm.sock"
CTRL_SUFFIX = ".ctrl"

# Key generation in swtpm takes seconds; anything slower means the vTPM is stuck.
UPSTREAM_TIMEOUT = 120.0

# Larger than any TPM 2.0 response libtpms produces (its buffer is 4 KiB) and than
# any CMD_GET_INFO answer; a bigger size announcement means a broken upstream.
MAX_RESPONSE_SIZE = 1 << 16
# Connections a filter socket holds before they are accepted (asyncio's own).
_BACKLOG = 100


@dataclass(frozen=True)
class FilterEndpoint:
    """Where a container's filtered TPM listens on the host."""

    name: str
    data_path: Path

    @property
    def ctrl_path(self) -> Path:
        """The control socket, which tcti-swtpm finds at the data path plus .ctrl."""
        return Path(str(self.data_path) + CTRL_SUFFIX)

    @property
    def sockets(self) -> tuple[Path, Path]:
        """The data and control sockets' paths."""
        return self.data_path, self.ctrl_path

    @property
    def directory(self) -> Path:
        """The directory holding both sockets; this is what gets bind-mounted."""
        return self.data_path.parent

    @property
    def tcti(self) -> str:
        """The TCTI configuration string reaching this filter from the host."""
        return f"swtpm:path={self.data_path}"


class UpstreamError(Exception):
    """The vTPM behind a filter did not answer properly."""


class TpmFilter:
    """One container's filtered TPM: serves two sockets, forwards to one vTPM."""

    def __init__(
        self,
        name: str,
        upstream: Path,
        data_path: Path,
        policy: FilterPolicy | None = None,
        *,
        timeout: float = UPSTREAM_TIMEOUT,
        lease: Lease | None = None,
    ):
        self.endpoint = FilterEndpoint(name=name, data_path=Path(data_path))
        self.upstream = Path(upstream)
        self.policy = policy or FilterPolicy()
        self.timeout = timeout
        self.lease = lease
        self.refused = 0
        self.forwarded = 0
        self._lock = asyncio.Lock()
        self._servers: list[asyncio.AbstractServer] = []
        # Sockets listen() made that serve() has not taken over yet.
        self._listening: list[tuple[socket.socket, Callable]] = []
        # serve() and close() one at a time: a close() queued right behind a
        # serve() must find every server it made.
        self._setup = asyncio.Lock()
        self._clients: set[asyncio.Task] = set()

    def listen(self) -> FilterEndpoint:
        """Create both listening sockets (mode 0666: the bind mount is the guard).

        Done in the caller's thread: a client that connects before serve()
        runs on the loop waits in the listen backlog, so whoever opens a
        filter need not wait for the loop thread to wake.
        """
        # sun_path holds 107 bytes (unix(7)); say so rather than fail in bind().
        if len(str(self.endpoint.ctrl_path)) > 107:
            raise ConfigError(
                f"the TPM socket path {self.endpoint.ctrl_path} is longer than 107 "
                "bytes; use a shorter container name or --run-dir"
            )
        directory = self.endpoint.directory
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)

        try:
            for path, handler in (
                (self.endpoint.data_path, self._serve_data),
                (self.endpoint.ctrl_path, self._serve_ctrl),
            ):
                # A socket file left by a daemon that died would make bind() fail.
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._listening.append((sock, handler))
                sock.bind(str(path))
                os.chmod(path, 0o666)
                sock.listen(_BACKLOG)
        except BaseException:
            self._close_listening()
            for path in self.endpoint.sockets:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return self.endpoint

    async def serve(self) -> None:
        """Accept clients on the sockets listen() made (run on the loop)."""
        async with self._setup:
            while self._listening:
                sock, handler = self._listening.pop(0)
                try:
                    server = await asyncio.start_unix_server(
                        self._tracked(handler), sock=sock, backlog=_BACKLOG
                    )
                except BaseException:
                    # Refuse clients rather than leave them in the backlog.
                    sock.close()
                    self._close_listening()
                    raise
                self._servers.append(server)
        log.info(
            "filter %s listening at %s", self.endpoint.name, self.endpoint.directory
        )

    def _close_listening(self) -> None:
        for sock, _ in self._listening:
            sock.close()
        self._listening.clear()

    async def close(self, remove_directory: bool = True) -> None:
        """Stop listening, end every client connection and remove the sockets
        (and their directory, unless a container still shows it: see
        FilterHost.stop)."""
        async with self._setup:
            self._close_listening()
            for server in self._servers:
                server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            for server in self._servers:
                await server.wait_closed()
            self._servers.clear()

            for path in self.endpoint.sockets:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            if remove_directory:
                with contextlib.suppress(OSError):
                    self.endpoint.directory.rmdir()
            log.info("filter %s closed", self.endpoint.name)

    def _tracked(self, handler):
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            task = asyncio.current_task()
            self._clients.add(task)
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            except UpstreamError as exc:
                log.warning("filter %s: %s", self.endpoint.name, exc)
            except Exception:
                log.exception("filter %s: client handler failed", self.endpoint.name)
            finally:
                self._clients.discard(task)
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        return run

    # TODO: connections per filter are not limited; a container can open many idle
    # ones and cost the daemon a file descriptor each. Matters for hostile
    # containers on hosts near their fd limit.
    async def _serve_data(self, reader, writer) -> None:
        while True:
            head = await reader.readexactly(HEADER_SIZE)

            # 1. A header with a bad tag or size: answer, then close, because the
            # stream can no longer be cut into commands.
            decision = check_header(parse_header(head), self.policy)
            if decision.verdict is Verdict.REFUSE:
                await self._refuse(writer, error_response(decision.rc), decision.reason)
                return

            # 2. The whole command, checked against the policy.
            body = await reader.readexactly(parse_header(head).size - HEADER_SIZE)
            command = head + body
            decision = check_command(command, self.policy)
            if decision.verdict is Verdict.REFUSE:
                await self._refuse(writer, error_response(decision.rc), decision.reason)
                continue

            # 3. Forwarded, one command in flight to the vTPM at a time.
            response = await self._transact_data(command)
            self.forwarded += 1
            writer.write(response)
            await writer.drain()

    async def _serve_ctrl(self, reader, writer) -> None:
        while True:
            code = struct.unpack(">I", await reader.readexactly(4))[0]

            # 1. Unknown or refused commands: their payload length may be unknown,
            # so answer and close.
            size = ctrl.payload_size(code)
            if size is None:
                await self._refuse(
                    writer, ctrl.refusal(ctrl.TPM_DISABLED_CMD), f"ctrl.cmd_{code:#x}"
                )
                return
            payload = await reader.readexactly(size)
            decision = ctrl.check_ctrl(code, payload)
            if not decision.forward:
                await self._refuse(
                    writer, ctrl.refusal(decision.result), decision.reason
                )
                return

            # 2. Forwarded, serialized with the data channel.
            response = await self._transact_ctrl(code, payload)
            if code == ctrl.CMD_GET_CAPABILITY:
                response = ctrl.mask_capabilities(response)
            self.forwarded += 1
            writer.write(response)
            await writer.drain()

    async def serve_device(self, chip: tpm_device.ProxyChip) -> None:
        """Answer the kernel's commands for a vtpm-proxy chip until cancelled.

        The kernel sends one command at a time and waits for its response, so
        each read is one whole command.
        """
        loop = asyncio.get_running_loop()
        while True:
            ready = loop.create_future()
            loop.add_reader(chip.fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(chip.fd)
            try:
                command = os.read(chip.fd, MAX_RESPONSE_SIZE)
            except BlockingIOError:
                continue
            if not command:
                return
            os.write(chip.fd, await self._device_answer(command))

    async def _device_answer(self, command: bytes) -> bytes:
        if tpm_device.command_code(command) == tpm_device.TPM2_CC_SET_LOCALITY:
            return tpm_device.SUCCESS_RESPONSE
        decision = check_command(command, self.policy)
        if decision.verdict is Verdict.REFUSE:
            self.refused += 1
            log.info(
                "device %s refused a command: %s", self.endpoint.name, decision.reason
            )
            return error_response(decision.rc)
        self.forwarded += 1
        try:
            return await self._transact_data(command)
        except UpstreamError as exc:
            # The kernel waits for an answer to every command; without one the
            # container's /dev/tpm0 would hang, so it gets TPM_RC_FAILURE.
            log.warning("device %s: %s", self.endpoint.name, exc)
            return error_response(TPM_RC_FAILURE)

    async def _refuse(self, writer, response: bytes, reason: str) -> None:
        self.refused += 1
        log.info("filter %s refused a command: %s", self.endpoint.name, reason)
        writer.write(response)
        await writer.drain()

    async def _transact_data(self, command: bytes) -> bytes:
        async with self._lock:
            return await self._with_upstream(
                self.upstream, command, self._read_response
            )

    async def _transact_ctrl(self, code: int, payload: bytes) -> bytes:
        async def read(reader: asyncio.StreamReader) -> bytes:
            result = await reader.readexactly(4)
            if result != b"\0\0\0\0":
                return result
            tail = await reader.readexactly(ctrl.RESPONSE_TAIL[code])
            if code == ctrl.CMD_GET_INFO:
                length = struct.unpack_from(">I", tail, 4)[0]
                if length > MAX_RESPONSE_SIZE:
                    raise UpstreamError(f"control response of {length} bytes")
                tail += await reader.readexactly(length)
            return result + tail

        request = struct.pack(">I", code) + payload
        path = Path(str(self.upstream) + CTRL_SUFFIX)
        async with self._lock:
            return await self._with_upstream(path, request, read)

    async def _with_upstream(self, path: Path, request: bytes, read) -> bytes:
        try:
            async with asyncio.timeout(self.timeout), self._leased():
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    writer.write(request)
                    await writer.drain()
                    return await read(reader)
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise UpstreamError(f"vTPM at {path} did not answer: {exc!r}") from exc

    @contextlib.asynccontextmanager
    async def _leased(self):
        """The vTPM held running (and started if it was released) for one command."""
        if self.lease is None:
            yield
            return
        # Starting a released vTPM blocks for a few milliseconds; off the loop.
        loop = asyncio.get_running_loop()
        try:
            held = self.lease()
            entering = loop.run_in_executor(None, held.__enter__)
            # Shielded: a command cancelled meanwhile (a close, a timeout)
            # cannot stop the thread, so the lease is left once it is taken.
            await asyncio.shield(entering)
        except asyncio.CancelledError:
            entering.add_done_callback(functools.partial(_leave, held))
            raise
        except Exception as exc:
            raise UpstreamError(f"vTPM could not be started: {exc}") from exc
        try:
            yield
        finally:
            held.__exit__(None, None, None)

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readexactly(HEADER_SIZE)
        size = parse_header(head).size
        if not HEADER_SIZE <= size <= MAX_RESPONSE_SIZE:
            raise UpstreamError(f"vTPM announced a response of {size} bytes")
        return head + await reader.readexactly(size - HEADER_SIZE)


def _leave(held: AbstractContextManager, entering: asyncio.Future) -> None:
    """Leave a lease whose command was cancelled while it was being taken."""
    if not entering.cancelled() and entering.exception() is None:
        held.__exit__(None, None, None)
