"""TCP sockets bound before a server starts, so that a bad address is one line."""

from __future__ import annotations

import socket

from cvtpm.errors import ConfigError


def bind_tcp(host: str, port: int) -> socket.socket:
    """A socket listening at host:port, or a ConfigError saying why not.

    Bound here rather than by uvicorn, which reports a port in use with a
    traceback and an exit status of its own.
    """
    try:
        return socket.create_server((host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None
