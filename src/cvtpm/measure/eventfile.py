"""The file behind a fanotify event's fd, with what IMA needs of it, once."""

from __future__ import annotations

import os

from cvtpm.ima.entry import Entry, ima_legacy, ima_sig, make_entry
from cvtpm.measure import procinfo
from cvtpm.measure.hashing import DigestCache, hash_fd

_XATTR_IMA = "security.ima"
_EVM_IMA_XATTR_DIGSIG = 0x03  # include/linux/integrity.h, evm_ima_xattr_type


class EventFile:
    """The file behind an event fd, with what IMA needs computed once."""

    def __init__(self, fd: int, st: os.stat_result, digests: DigestCache | None = None):
        self.fd = fd
        self.st = st
        # i_version stand-in: ctime and mtime change with every content or
        # metadata change that goes through the kernel.
        self.version = (st.st_ctime_ns, st.st_mtime_ns)
        self.key = (st.st_dev, st.st_ino)
        self._shared = digests
        self._digests: dict[str, bytes] = {}
        self._path: str | None = None
        self._fsmagic: int | None = None

    def digest(self, alg: str) -> bytes:
        """The file's digest, hashed through the fd once per algorithm.

        With a DigestCache, a version of the file that any container has
        had hashed is not hashed again.
        """
        if alg not in self._digests:
            if self._shared is None:
                self._digests[alg] = hash_fd(self.fd, alg)
            else:
                version = (*self.key, *self.version, self.st.st_size)
                self._digests[alg] = self._shared.digest(self.fd, version, alg)
        return self._digests[alg]

    def path(self) -> str:
        """The path as the container sees it (d_path of the event's file)."""
        if self._path is None:
            self._path = os.readlink(f"/proc/self/fd/{self.fd}")
        return self._path

    def fsmagic(self) -> int:
        """The filesystem's magic number, for `fsmagic=` policy rules."""
        if self._fsmagic is None:
            self._fsmagic = procinfo.fs_magic(self.fd)
        return self._fsmagic

    def entry(self, template: str, alg: str) -> Entry:
        """The file's list entry in `template`, its digest in `alg`."""
        if template == "ima-sig":
            return ima_sig(self.path(), self.digest(alg), alg, self.signature())
        if template == "ima":  # the legacy template: sha1 whatever was asked
            return ima_legacy(self.path(), self.digest("sha1"))
        return make_entry(template, self.path(), self.digest(alg), alg)

    def signature(self) -> bytes:
        """The file's security.ima signature (for ima-sig), or b"" if none."""
        try:
            value = os.getxattr(self.fd, _XATTR_IMA)
        except OSError:
            return b""
        return value if value[:1] == bytes([_EVM_IMA_XATTR_DIGSIG]) else b""
