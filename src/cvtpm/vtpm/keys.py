"""The host master key and the per-vTPM state keys derived from it.

Only the master key is ever on disk (mode 0400). Each vTPM's AES-256 state key
is derived from it with HKDF-SHA256 (RFC 5869), salted with the vTPM's UUID, and
reaches swtpm through a pipe, so the derived key is never written anywhere.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cvtpm.errors import ConfigError
from cvtpm.locking import exclusive

MASTER_KEY_SIZE = 32
STATE_KEY_SIZE = 32
_HKDF_INFO = b"cvtpm vtpm state key v1"


def load_or_create_master_key(path: Path, may_create: bool = True) -> bytes:
    """The host master key at `path`, created (mode 0400) if it does not exist.

    With `may_create` false (vTPMs already exist), a missing key is an error: a
    new key would make every existing vTPM's state undecryptable.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Two first uses at once must agree on one key.
    with exclusive(path.with_name(f".{path.name}.lock")):
        if not path.exists() and not may_create:
            raise ConfigError(
                f"the master key {path} is missing, but vTPMs exist whose state "
                "only it decrypts; restore it from a backup (a new key would "
                "orphan them all)"
            )
        if not path.exists():
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400
            )
            try:
                os.write(fd, secrets.token_bytes(MASTER_KEY_SIZE))
                os.fsync(fd)
            finally:
                os.close(fd)
        key = path.read_bytes()

    if len(key) != MASTER_KEY_SIZE:
        raise ConfigError(
            f"the master key {path} has {len(key)} bytes, not {MASTER_KEY_SIZE}; "
            "it is damaged, and without it no vTPM state can be decrypted"
        )
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"the master key {path} is readable by others; chmod 0400 it")
    return key


def derive_state_key(master_key: bytes, vtpm_uuid: str) -> bytes:
    """The AES-256 key that encrypts one vTPM's state."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=STATE_KEY_SIZE,
        salt=uuid.UUID(vtpm_uuid).bytes,
        info=_HKDF_INFO,
    ).derive(master_key)


def key_pipe(key: bytes) -> int:
    """A pipe whose read end holds `key`, for swtpm; the caller closes it."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, key)
    finally:
        os.close(write_fd)
    return read_fd
