"""The `cvtpm daemon` command: the host service hooks and verifiers talk to."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import sys

import click
import uvicorn

from cvtpm.errors import ConfigError
from cvtpm.measure.agent import DEFAULT_BUSY_POLL
from cvtpm.server import keeper
from cvtpm.server.daemon import control_app, evidence_app
from cvtpm.server.host import Host
from cvtpm.server.listen import bind_tcp
from cvtpm.vtpm.manager import check_run_dir

log = logging.getLogger(__name__)


_held_locks: list[int] = []


def _hold_daemon_lock(paths) -> None:
    """Refuse to run a second daemon on the same state or run directory."""
    try:
        paths.ensure()
    except OSError as exc:
        raise ConfigError(f"cannot use {exc.filename}: {exc.strerror}") from exc
    for directory in (paths.state, paths.run):
        fd = os.open(
            directory / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"another cvtpm daemon (pid {holder}) is running on {directory}; "
                "stop it first, or give this one other --state-dir and --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held_locks.append(fd)


def _parse_listen(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise click.BadParameter(
            f"{value!r}: expected HOST:PORT with a port from 1 to 65535, "
            "e.g. 127.0.0.1:8441",
            param_hint="--listen",
        )
    return host, int(port)


@click.command()
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Also serve evidence (only) over TCP, for remote verifiers.",
)
@click.option(
    "--no-measure",
    is_flag=True,
    help="vTPMs and TPM sockets only, without the fanotify measurement agent.",
)
@click.option(
    "--pool",
    "pool_size",
    type=click.IntRange(0, 10000),
    default=8,
    show_default=True,
    help="Certified vTPMs kept ready, so containers never wait for one. A "
    "taken one is replaced once no container started for 50 ms, or at once "
    "when fewer than half are left.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0),
    default=0,
    metavar="SECONDS",
    help="Release the swtpm of a container's vTPM after this long unused; it "
    "comes back, PCRs and all, on the next use. 0 (the default) never releases.",
)
@click.option(
    "--busy-poll",
    "busy_poll_us",
    type=click.IntRange(0, 1_000_000),
    default=round(DEFAULT_BUSY_POLL * 1e6),
    show_default=True,
    metavar="MICROSECONDS",
    help="Keep polling for measurement events this long after the last one "
    "instead of sleeping. 0 sleeps at once, which on 2 cores is also the "
    "fastest: a poller takes the CPU the waiting process needs.",
)
@click.option("--fanotify-fd", type=int, hidden=True)
@click.option("--fanotify-continued", is_flag=True, hidden=True)
@click.pass_context
def daemon(
    ctx,
    listen,
    no_measure,
    pool_size,
    idle_timeout,
    busy_poll_us,
    fanotify_fd,
    fanotify_continued,
):
    """Run the cvtpm host daemon in the foreground (root).

    A small keeper process holds the fanotify group and restarts the daemon
    if it dies, so no access slips through unmeasured while it is down.
    """
    tcp = _parse_listen(listen)
    paths = ctx.obj
    # Refused now, not once the pool and every container start fail.
    check_run_dir(paths)
    if fanotify_fd is None:
        # The keeper (or a daemon without measurement) holds this lock for its
        # life; its worker runs under it.
        _hold_daemon_lock(paths)
    # Bound before anything starts: a port in use is a one-line error, and a
    # keeper does not restart a worker that cannot serve.
    try:
        evidence_socket = None if tcp is None else bind_tcp(*tcp)
    except ConfigError as exc:
        if fanotify_fd is None:
            raise
        click.echo(f"cvtpm: error: {exc.explain()}", err=True)
        sys.exit(keeper.EXIT_CONFIG)
    if fanotify_fd is None and not no_measure:
        # This is the keeper; the worker is this same command, run again.
        if evidence_socket is not None:
            evidence_socket.close()
        sys.exit(keeper.run([sys.executable, "-m", "cvtpm.cli.main", *sys.argv[1:]]))

    host = Host(
        paths,
        measure=not no_measure,
        pool_size=pool_size,
        fanotify_fd=fanotify_fd,
        idle_timeout=idle_timeout,
        busy_poll=busy_poll_us / 1e6,
        group_continued=fanotify_continued,
    )
    host.start()
    socket_path = paths.run / "daemon.sock"
    socket_path.unlink(missing_ok=True)

    servers = [
        uvicorn.Server(
            uvicorn.Config(control_app(host), uds=str(socket_path), log_level="warning")
        )
    ]
    sockets: list[list[socket.socket] | None] = [None]
    if evidence_socket is not None:
        servers.append(
            uvicorn.Server(uvicorn.Config(evidence_app(host), log_level="warning"))
        )
        sockets.append([evidence_socket])

    async def serve():
        tasks = [
            asyncio.create_task(s.serve(sockets=given))
            for s, given in zip(servers, sockets, strict=True)
        ]
        while not all(s.started for s in servers):
            if any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.01)
        os.chmod(socket_path, 0o600)
        click.echo(f"cvtpm daemon: listening on {socket_path}", err=True)
        await asyncio.gather(*tasks)

    # uvicorn handles SIGINT/SIGTERM by asking every server to exit.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()
        socket_path.unlink(missing_ok=True)


COMMANDS = [daemon]
