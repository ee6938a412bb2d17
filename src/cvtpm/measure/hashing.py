"""Hashing a file through the descriptor an event gave, never through its path."""

from __future__ import annotations

import hashlib
import os
import threading

# 1 MiB reads keep the buffer in cache and measured fastest here (~1.3 GB/s
# with SHA-NI); far larger blocks are slower.  pread, not mmap: a file
# truncated under an mmap raises SIGBUS, which would kill the agent.
BLOCK_SIZE = 1 << 20

_local = threading.local()


def hash_fd(fd: int, algorithm: str = "sha256") -> bytes:
    """Digest the whole content of the open file `fd` (position untouched)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(BLOCK_SIZE)
    view = memoryview(buf)

    h = hashlib.new(algorithm)
    offset = 0
    while True:
        n = os.preadv(fd, [buf], offset)
        if n == 0:
            break
        h.update(view[:n])
        offset += n
    return h.digest()
