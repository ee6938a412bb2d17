"""Hash algorithm names and sizes as the kernel's IMA uses them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

# The kernel's `enum hash_algo` (include/uapi/linux/hash_info.h), whose value is the
# third byte of an IMA v2 signature, with the names of crypto/hash_info.c's
# hash_algo_name[] that d-ng fields carry before the ':'.
HASH_ALGO_NAMES: tuple[str, ...] = (
    "md4",
    "md5",
    "sha1",
    "rmd160",
    "sha256",
    "sha384",
    "sha512",
    "sha224",
    "rmd128",
    "rmd256",
    "rmd320",
    "wp256",
    "wp384",
    "wp512",
    "tgr128",
    "tgr160",
    "tgr192",
    "sm3",
    "streebog256",
    "streebog512",
    "sha3-256",
    "sha3-384",
    "sha3-512",
)

# crypto/hash_info.c hash_digest_size[], by name.
DIGEST_SIZES: dict[str, int] = {
    "md4": 16,
    "md5": 16,
    "sha1": 20,
    "rmd160": 20,
    "sha256": 32,
    "sha384": 48,
    "sha512": 64,
    "sha224": 28,
    "rmd128": 16,
    "rmd256": 32,
    "rmd320": 40,
    "wp256": 32,
    "wp384": 48,
    "wp512": 64,
    "tgr128": 16,
    "tgr160": 20,
    "tgr192": 24,
    "sm3": 32,
    "streebog256": 32,
    "streebog512": 64,
    "sha3-256": 32,
    "sha3-384": 48,
    "sha3-512": 64,
}

# The algorithms we can compute ourselves (file digests, PCR banks, boot_aggregate).
HASH_FUNCTIONS: dict[str, Callable[..., hashlib._Hash]] = {
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
    "sha224": hashlib.sha224,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
    "sha3-256": hashlib.sha3_256,
    "sha3-384": hashlib.sha3_384,
    "sha3-512": hashlib.sha3_512,
}


def hash_function(alg: str) -> Callable[..., hashlib._Hash]:
    """The hashlib constructor for a kernel algorithm name (ValueError if none)."""
    try:
        return HASH_FUNCTIONS[alg]
    except KeyError:
        raise ValueError(f"unsupported hash algorithm {alg!r}") from None


def digest(alg: str, data: bytes) -> bytes:
    """H_alg(data) for a kernel algorithm name."""
    return hash_function(alg)(data).digest()


def guess_algorithm(size: int) -> str | None:
    """The usual algorithm of a bare digest of `size` bytes (as policies list them)."""
    return _BY_SIZE.get(size)


_BY_SIZE = {
    16: "md5",
    20: "sha1",
    28: "sha224",
    32: "sha256",
    48: "sha384",
    64: "sha512",
}
