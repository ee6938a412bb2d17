"""The `cvtpm daemon` command: the host service hooks and verifiers talk to."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import click
import uvicorn

from cvtpm.server import keeper
from cvtpm.server.daemon import control_app, evidence_app
from cvtpm.server.host import Host

log = logging.getLogger(__name__)


def _parse_listen(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:8441")
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
    help="Certified vTPMs kept ready, so containers never wait for one.",
)
@click.option("--fanotify-fd", type=int, hidden=True)
@click.pass_context
def daemon(ctx, listen, no_measure, pool_size, fanotify_fd):
    """Run the cvtpm host daemon in the foreground (root).

    A small keeper process holds the fanotify group and restarts the daemon
    if it dies, so no access slips through unmeasured while it is down.
    """
    tcp = _parse_listen(listen)
    paths = ctx.obj
    if fanotify_fd is None and not no_measure:
        # This is the keeper; the worker is this same command, run again.
        sys.exit(keeper.run([sys.executable, "-m", "cvtpm.cli.main", *sys.argv[1:]]))

    host = Host(
        paths, measure=not no_measure, pool_size=pool_size, fanotify_fd=fanotify_fd
    )
    host.start()
    socket_path = paths.run / "daemon.sock"
    socket_path.unlink(missing_ok=True)

    servers = [
        uvicorn.Server(
            uvicorn.Config(control_app(host), uds=str(socket_path), log_level="warning")
        )
    ]
    if tcp is not None:
        servers.append(
            uvicorn.Server(
                uvicorn.Config(
                    evidence_app(host), host=tcp[0], port=tcp[1], log_level="warning"
                )
            )
        )

    async def serve():
        tasks = [asyncio.create_task(s.serve()) for s in servers]
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
