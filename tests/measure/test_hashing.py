"""Hashing through a descriptor, and the digests shared between containers."""

from __future__ import annotations

import hashlib
import os

from cvtpm.measure import hashing
from cvtpm.measure.hashing import DigestCache, hash_fd


def test_hash_fd_reads_the_whole_file_in_blocks(tmp_path):
    """A file over several blocks hashes as hashlib does, position untouched."""
    data = os.urandom(2 * hashing.BLOCK_SIZE + 7)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        os.lseek(fd, 5, os.SEEK_SET)
        assert hash_fd(fd, "sha256") == hashlib.sha256(data).digest()
        assert hash_fd(fd, "sha1") == hashlib.sha1(data).digest()
        assert os.lseek(fd, 0, os.SEEK_CUR) == 5
    finally:
        os.close(fd)


def test_a_version_is_hashed_once_per_algorithm(tmp_path, monkeypatch):
    """The same version from anywhere is hashed once; a new version again."""
    hashed = []
    real = hashing.hash_fd
    monkeypatch.setattr(
        hashing, "hash_fd", lambda fd, alg: hashed.append(alg) or real(fd, alg)
    )
    (tmp_path / "f").write_bytes(b"one")
    cache = DigestCache()
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        for _ in range(3):
            assert (
                cache.digest(fd, ("v1",), "sha256") == hashlib.sha256(b"one").digest()
            )
        assert cache.digest(fd, ("v1",), "sha1") == hashlib.sha1(b"one").digest()
        assert hashed == ["sha256", "sha1"]

        # The content changed and so did its version: hashed anew.
        os.pwrite(os.open(tmp_path / "f", os.O_WRONLY), b"two", 0)
        assert cache.digest(fd, ("v2",), "sha256") == hashlib.sha256(b"two").digest()
        assert hashed == ["sha256", "sha1", "sha256"]
    finally:
        os.close(fd)


def test_the_oldest_versions_go_first(tmp_path):
    """Past its size, the cache forgets the least recently used version."""
    (tmp_path / "f").write_bytes(b"x")
    cache = DigestCache(size=2)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        cache.digest(fd, ("a",), "sha256")
        cache.digest(fd, ("b",), "sha256")
        cache.digest(fd, ("a",), "sha256")  # a is now the most recent
        cache.digest(fd, ("c",), "sha256")
    finally:
        os.close(fd)
    assert [key[0] for key in cache._digests] == ["a", "c"]
