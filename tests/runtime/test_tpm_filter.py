"""The filtered TPM socket before a real swtpm, driven by tpm2-tools and raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cvtpm.errors import StateError
from cvtpm.runtime import ctrl_commands as ctrl
from cvtpm.runtime.filter_host import FilterHost
from cvtpm.runtime.tpm_filter import TpmFilter, UpstreamError

pytestmark = pytest.mark.swtpm

ZERO = "00" * 32


def tpm2(tool: str, *args: str, tcti: str) -> subprocess.CompletedProcess:
    """Run one tpm2-tools tool against `tcti`."""
    env = dict(os.environ, TPM2TOOLS_TCTI=tcti)
    return subprocess.run(
        ["tpm2", tool, *args], env=env, capture_output=True, text=True, timeout=60
    )


def pcr_read_command(pcr: int) -> bytes:
    """TPM2_PCR_Read of one sha256 PCR."""
    select = bytearray(3)
    select[pcr // 8] |= 1 << (pcr % 8)
    body = struct.pack(">IHB", 1, 0x000B, 3) + bytes(select)
    return struct.pack(">HII", 0x8001, 10 + len(body), 0x17E) + body


def exchange(path, request: bytes, count: int = 1) -> list[bytes]:
    """Send `request` `count` times on one connection; return each TPM response."""
    responses = []
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(30)
        conn.connect(str(path))
        for _ in range(count):
            conn.sendall(request)
            head = _recv_exactly(conn, 10)
            size = struct.unpack(">I", head[2:6])[0]
            responses.append(head + _recv_exactly(conn, size - 10))
    return responses


def ctrl_exchange(path, request: bytes) -> bytes:
    """Send one control command; return what comes back until the filter closes."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(30)
        conn.connect(str(path))
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        return data


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


@pytest.fixture
def filtered(swtpm_socket, filter_host, short_tmp):
    """A filter in front of the swtpm; yields (endpoint, direct TCTI)."""
    endpoint = filter_host.open("c1", swtpm_socket, short_tmp / "filter")
    return endpoint, f"swtpm:path={swtpm_socket}"


@pytest.fixture
def upstream(swtpm_socket):
    """The swtpm's own data socket, bypassing the filter."""
    return swtpm_socket


def test_pcrread_through_the_filter(filtered):
    """tpm2_pcrread through the filter prints what the vTPM itself reports."""
    endpoint, direct = filtered
    through = tpm2("pcrread", "sha256:10,16", tcti=endpoint.tcti)
    assert through.returncode == 0, through.stderr
    assert through.stdout == tpm2("pcrread", "sha256:10,16", tcti=direct).stdout


def test_extend_of_pcr_10_is_refused_and_pcr_16_passes(filtered):
    """PCR 10 cannot be extended through the filter (TPM_RC_LOCALITY); PCR 16 can."""
    endpoint, direct = filtered
    before = tpm2("pcrread", "sha256:10", tcti=direct).stdout

    refused = tpm2("pcrextend", f"10:sha256={ZERO}", tcti=endpoint.tcti)
    assert refused.returncode != 0
    assert "0x907" in refused.stderr
    assert tpm2("pcrread", "sha256:10", tcti=direct).stdout == before

    passed = tpm2("pcrextend", f"16:sha256={ZERO}", tcti=endpoint.tcti)
    assert passed.returncode == 0, passed.stderr
    assert "0x0000000000" not in tpm2("pcrread", "sha256:16", tcti=direct).stdout
    assert endpoint.tcti.endswith("/filter/tpm.sock")


def test_reset_and_startup_are_refused(filtered):
    """PCR_Reset of PCR 10 and TPM2_Startup(CLEAR) never reach the vTPM."""
    endpoint, direct = filtered
    tpm2("pcrextend", f"10:sha256={ZERO}", tcti=direct)
    extended = tpm2("pcrread", "sha256:10", tcti=direct).stdout

    assert "0x907" in tpm2("pcrreset", "10", tcti=endpoint.tcti).stderr
    assert tpm2("startup", "--clear", tcti=endpoint.tcti).returncode == 0
    assert tpm2("shutdown", tcti=endpoint.tcti).returncode != 0
    assert tpm2("pcrread", "sha256:10", tcti=direct).stdout == extended


@pytest.mark.parametrize(
    ("request_bytes", "result"),
    [
        (struct.pack(">II", ctrl.CMD_INIT, 0), ctrl.TPM_DISABLED_CMD),
        (struct.pack(">I", ctrl.CMD_STOP), ctrl.TPM_DISABLED_CMD),
        (struct.pack(">I", ctrl.CMD_SHUTDOWN), ctrl.TPM_DISABLED_CMD),
        (struct.pack(">IIII", ctrl.CMD_GET_STATEBLOB, 1, 1, 0), ctrl.TPM_DISABLED_CMD),
        (struct.pack(">IB", ctrl.CMD_RESET_TPMESTABLISHED, 3), ctrl.TPM_DISABLED_CMD),
        (struct.pack(">IB", ctrl.CMD_SET_LOCALITY, 4), ctrl.TPM_BAD_LOCALITY),
        (struct.pack(">II", ctrl.CMD_SET_BUFFERSIZE, 1 << 16), ctrl.TPM_DISABLED_CMD),
    ],
)
def test_control_channel_refusals(filtered, request_bytes, result):
    """Power cycles, stops, state reads and locality changes get an error result."""
    endpoint, direct = filtered
    tpm2("pcrextend", f"16:sha256={ZERO}", tcti=direct)
    extended = tpm2("pcrread", "sha256:16", tcti=direct).stdout

    assert ctrl_exchange(endpoint.ctrl_path, request_bytes) == struct.pack(">I", result)
    assert tpm2("pcrread", "sha256:16", tcti=direct).stdout == extended


def test_control_channel_queries_pass(filtered):
    """Capabilities (masked), locality 0 and the establishment bit are answered."""
    endpoint, _ = filtered
    caps = ctrl_exchange(endpoint.ctrl_path, struct.pack(">I", ctrl.CMD_GET_CAPABILITY))
    assert caps[:4] == bytes(4)
    assert struct.unpack(">I", caps[4:8])[0] & ~ctrl.ALLOWED_CAPS == 0

    locality = ctrl_exchange(endpoint.ctrl_path, struct.pack(">IB", 5, 0))
    assert locality == bytes(4)
    established = ctrl_exchange(endpoint.ctrl_path, struct.pack(">I", 4))
    assert len(established) == 8 and established[:4] == bytes(4)


def test_concurrent_clients_get_their_own_answers(filtered, upstream):
    """Sixteen clients, four commands each on one connection, each get their PCR."""
    endpoint, direct = filtered
    pcrs = list(range(16, 24)) * 2
    for pcr in range(16, 24):
        tpm2("pcrextend", f"{pcr}:sha256={pcr:064x}", tcti=direct)
    expected = {
        pcr: exchange(
            endpoint.data_path.parent.parent / "swtpm" / "tpm.sock",
            pcr_read_command(pcr),
        )[0]
        for pcr in range(16, 24)
    }

    def client(pcr):
        return pcr, exchange(endpoint.data_path, pcr_read_command(pcr), count=4)

    with ThreadPoolExecutor(len(pcrs)) as pool:
        for pcr, responses in pool.map(client, pcrs):
            assert responses == [expected[pcr]] * 4

    tools = tpm2("pcrread", "sha256:16", tcti=endpoint.tcti)
    assert tools.returncode == 0


def test_garbage_gets_an_error_response_and_the_filter_keeps_serving(filtered):
    """Non-TPM bytes get TPM_RC_BAD_TAG, oversized ones TPM_RC_COMMAND_SIZE."""
    endpoint, _ = filtered
    garbage = ctrl_exchange(endpoint.data_path, b"GET / HTTP/1.0\r\n\r\n")
    assert garbage == bytes.fromhex("00c40000000a0000001e")

    huge = struct.pack(">HII", 0x8001, 1 << 24, 0x17B)
    assert ctrl_exchange(endpoint.data_path, huge) == bytes.fromhex(
        "80010000000a00000142"
    )

    assert tpm2("getrandom", "--hex", "8", tcti=endpoint.tcti).returncode == 0


def test_closing_a_filter_removes_its_sockets(filtered, filter_host):
    """After close() no socket file or directory of the filter is left."""
    endpoint, _ = filtered
    assert endpoint.data_path.is_socket() and endpoint.ctrl_path.is_socket()
    assert oct(endpoint.data_path.stat().st_mode & 0o777) == "0o666"

    filter_host.close("c1")
    assert not endpoint.directory.exists()
    assert filter_host.names() == []


def test_device_relay_answers_tpm_rc_failure_when_the_vtpm_is_gone(short_tmp):
    """The kernel waits for an answer to every command: with no vTPM behind the
    relay, it gets TPM_RC_FAILURE rather than silence."""
    relay = TpmFilter("dev", short_tmp / "gone.sock", short_tmp / "unused", timeout=2)

    response = asyncio.run(relay._device_answer(pcr_read_command(16)))

    assert response == bytes.fromhex("80010000000a00000101")


def test_a_failing_lease_is_an_upstream_error(swtpm_socket, short_tmp):
    """A vTPM that cannot be started for a command fails that command cleanly."""

    @contextlib.contextmanager
    def lease():
        raise StateError("vTPM 'c1' has unreadable state")
        yield

    relay = TpmFilter("c1", swtpm_socket, short_tmp / "unused", lease=lease)

    with pytest.raises(UpstreamError, match="could not be started: .*unreadable"):
        asyncio.run(relay._transact_data(pcr_read_command(16)))


def test_a_client_is_served_however_soon_it_connects(
    swtpm_socket, filter_host, short_tmp
):
    """open() returns once the sockets listen, before the loop serves them: a
    client connecting at once waits in the backlog and gets its answer; a
    filter closed at once leaves no socket and no descriptor behind."""
    for i in range(20):
        endpoint = filter_host.open(f"f{i}", swtpm_socket, short_tmp / f"f{i}")
        (answer,) = exchange(endpoint.data_path, pcr_read_command(16))
        assert answer[6:10] == b"\x00\x00\x00\x00"  # TPM_RC_SUCCESS

        quick = filter_host.open(f"q{i}", swtpm_socket, short_tmp / f"q{i}")
        filter_host.close(f"q{i}")
        assert not quick.directory.exists()
        filter_host.close(f"f{i}")

    assert filter_host.names() == []
    assert listening_under(short_tmp) == []


def test_a_socket_path_that_cannot_be_bound_is_an_error(
    swtpm_socket, filter_host, short_tmp
):
    """A directory where the socket should be: open() raises, keeps nothing open."""
    (short_tmp / "f" / "tpm.sock").mkdir(parents=True)

    with pytest.raises(OSError):
        filter_host.open("f", swtpm_socket, short_tmp / "f")

    assert filter_host.names() == []
    assert listening_under(short_tmp) == []


def listening_under(directory) -> list[str]:
    """Paths under `directory` that a socket of this process is bound to."""
    bound = {}
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) == 8:
                bound[fields[6]] = fields[7]
    ours = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                path = bound.get(target[8:-1], "")
                if path.startswith(str(directory)):
                    ours.append(path)
    return ours


def test_a_filter_host_not_started_opens_nothing(swtpm_socket, short_tmp):
    """open() before start() is a StateError, and no socket is made."""
    with pytest.raises(StateError, match="not running; call start"):
        FilterHost().open("f", swtpm_socket, short_tmp / "f")

    assert not (short_tmp / "f").exists()


def test_a_filter_that_cannot_serve_refuses_clients(
    swtpm_socket, filter_host, short_tmp, monkeypatch, caplog
):
    """If the loop cannot take the sockets over, a client is refused at once (and
    the failure logged), rather than left waiting in the backlog."""

    async def broken(*args, **kwargs):
        raise OSError("no more watches")

    monkeypatch.setattr(asyncio, "start_unix_server", broken)
    endpoint = filter_host.open("f", swtpm_socket, short_tmp / "f")
    filter_host._call(asyncio.sleep(0))  # the loop has run serve() by now

    for path in (endpoint.data_path, endpoint.ctrl_path):
        with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))
    assert "filter f: serving its sockets: no more watches" in caplog.text
    filter_host.close("f")
    assert listening_under(short_tmp) == []


def test_a_daemon_restart_keeps_the_directory_a_container_shows(
    swtpm_socket, short_tmp
):
    """The sockets' directory is bind-mounted into the container: a filter host
    that stops (the daemon's orderly stop) leaves it, so the next one makes
    its sockets in the very directory the container's mount shows. Closing a
    container's filter for good removes it."""
    directory = short_tmp / "c1"
    first = FilterHost().start()
    first.open("c1", swtpm_socket, directory)
    inode = directory.stat().st_ino
    first.stop()
    assert directory.stat().st_ino == inode
    assert not (directory / "tpm.sock").exists()

    second = FilterHost().start()
    try:
        endpoint = second.open("c1", swtpm_socket, directory)
        assert directory.stat().st_ino == inode
        (answer,) = exchange(endpoint.data_path, pcr_read_command(16))
        assert answer[6:10] == b"\x00\x00\x00\x00"
        second.close("c1")
        assert not directory.exists()
    finally:
        second.stop()


def test_a_lease_taken_for_a_cancelled_command_is_left(swtpm_socket, short_tmp):
    """A command cancelled while its vTPM is being started (a close, a timeout)
    still leaves the lease once the start is done: the vTPM can idle again."""
    events: list[str] = []
    entered = threading.Event()

    @contextlib.contextmanager
    def lease():
        time.sleep(0.3)  # a released vTPM starting
        events.append("enter")
        entered.set()
        yield
        events.append("exit")

    relay = TpmFilter("c1", swtpm_socket, short_tmp / "unused", lease=lease)

    async def cancel_midway():
        task = asyncio.create_task(relay._transact_data(pcr_read_command(16)))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(entered.wait, 5)
        await asyncio.sleep(0.05)  # the done callback runs on the loop

    asyncio.run(cancel_midway())
    assert events == ["enter", "exit"]
