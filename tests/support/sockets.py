"""Waiting for a process's unix socket to accept connections."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def wait_for_socket(path: Path, process: subprocess.Popen, timeout: float = 10.0):
    """Block until a unix socket at `path` accepts connections.

    The socket's file appears at bind(), before listen(): a connect in
    between is refused, so a file that exists is not yet a socket to use.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"swtpm exited with {process.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens at {path}")
