"""IMA/EVM digital signatures, version 2: parse the header, find the key, verify.

The layout is the kernel's `struct signature_v2_hdr` (security/integrity/
integrity.h): type 0x03 (EVM_IMA_XATTR_DIGSIG), version 2, hash_algo (u8, the
kernel's enum hash_algo), keyid (4 bytes, big-endian), sig_size (u16,
big-endian), then the signature itself. A v2 signature signs the file digest
directly (digsig_asymmetric.c asymmetric_verify): RSA PKCS#1 v1.5 or ECDSA.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from cvtpm.errors import ParseError
from cvtpm.ima.hashes import DIGEST_SIZES, HASH_ALGO_NAMES

EVM_IMA_XATTR_DIGSIG = 0x03  # integrity.h enum evm_ima_xattr_type
DIGSIG_VERSION_2 = 0x02
_HEADER = struct.Struct(">BBB4sH")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_CRYPTO_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha3-256": hashes.SHA3_256,
    "sha3-384": hashes.SHA3_384,
    "sha3-512": hashes.SHA3_512,
}


@dataclass(frozen=True, slots=True)
class ImaSignature:
    """A parsed v2 signature header and its signature bytes."""

    hash_algo: int  # the kernel's enum hash_algo
    keyid: bytes  # 4 bytes, as in the header
    signature: bytes

    @property
    def hash_name(self) -> str:
        """The kernel's name of the hash algorithm ("sha256", ...)."""
        return HASH_ALGO_NAMES[self.hash_algo]


def parse_signature(sig: bytes) -> ImaSignature:
    """Parse a v2 signature; ParseError("malformed signature: ...") on any defect."""
    if len(sig) < _HEADER.size:
        raise ParseError(
            f"malformed signature: header needs {_HEADER.size} bytes, got {len(sig)}",
            offset=0,
        )
    kind, version, hash_algo, key, size = _HEADER.unpack_from(sig)
    if kind != EVM_IMA_XATTR_DIGSIG:
        raise ParseError(f"malformed signature: type 0x{kind:02x}, not 0x03", offset=0)
    if version != DIGSIG_VERSION_2:
        raise ParseError(f"malformed signature: version {version}, not 2", offset=1)
    if hash_algo >= len(HASH_ALGO_NAMES):
        raise ParseError(f"malformed signature: hash_algo {hash_algo}", offset=2)
    if size != len(sig) - _HEADER.size:
        raise ParseError(
            f"malformed signature: sig_size {size} but {len(sig) - _HEADER.size} "
            "bytes follow the header",
            offset=7,
        )
    return ImaSignature(hash_algo, key, sig[_HEADER.size :])


def keyid(public_key: PublicKey) -> bytes:
    """The v2 keyid: the last 4 bytes of SHA-1 over the key (evmctl, libimaevm.c).

    RSA keys are hashed as a DER PKCS#1 RSAPublicKey, EC keys as the uncompressed
    point, as the kernel derives the subject key identifier of a raw key.
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        raw = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1
        )
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        raw = public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    else:
        raise TypeError(f"IMA signatures use RSA or EC keys, not {type(public_key)}")
    return hashlib.sha1(raw).digest()[-4:]


class Keyring:
    """Public keys that may sign files, indexed by their v2 keyid."""

    def __init__(self, keys: Iterable[PublicKey] = ()):
        self._keys: dict[bytes, PublicKey] = {}
        for key in keys:
            self.add(key)

    @classmethod
    def from_pem(cls, data: str | bytes) -> Keyring:
        """Load every PUBLIC KEY and CERTIFICATE block of a PEM text."""
        keyring = cls()
        if isinstance(data, str):
            data = data.encode("ascii")
        for block in _pem_blocks(data):
            keyring.add_pem(block)
        return keyring

    def add(self, key: PublicKey, key_id: bytes | None = None) -> bytes:
        """Add a key (keyid computed unless given); returns the keyid."""
        key_id = keyid(key) if key_id is None else key_id
        self._keys[key_id] = key
        return key_id

    def add_pem(self, block: bytes) -> bytes:
        """Add one PEM public key or certificate; ValueError if it is neither."""
        if b"CERTIFICATE" in block.split(b"\n", 1)[0]:
            cert = x509.load_pem_x509_certificate(block)
            return self.add(cert.public_key(), _certificate_keyid(cert))
        key = serialization.load_pem_public_key(block)
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError(f"unsupported key type {type(key).__name__}")
        return self.add(key)

    def get(self, key_id: bytes) -> PublicKey | None:
        """The key with this keyid, if any."""
        return self._keys.get(key_id)

    def keyids(self) -> list[bytes]:
        """The keyids of all keys, in the order they were added."""
        return list(self._keys)

    def to_pem(self) -> str:
        """All keys as PEM public keys."""
        return "".join(
            key.public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            ).decode("ascii")
            for key in self._keys.values()
        )

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(self._keys.values())


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """The outcome of checking one signature: ok, or a dotted reason and a message."""

    ok: bool
    reason: str | None = None
    message: str = ""


def verify_signature(
    sig: bytes, file_digest: bytes, digest_alg: str, keyring: Keyring
) -> SignatureCheck:
    """Check a v2 signature over a file digest against the keys of `keyring`.

    Reasons: `signature.malformed` (header or length wrong), `signature.unknown_key`
    (no key with its keyid), `signature.invalid` (wrong algorithm or a signature
    that does not verify).
    """
    # 1. The header must be well formed.
    try:
        parsed = parse_signature(sig)
    except ParseError as exc:
        return SignatureCheck(False, "signature.malformed", exc.message)

    # 2. It must sign this digest with the algorithm the digest was made with.
    if parsed.hash_name != digest_alg:
        return SignatureCheck(
            False,
            "signature.invalid",
            f"signature over {parsed.hash_name}, file digest is {digest_alg}",
        )
    algorithm = _CRYPTO_HASHES.get(digest_alg)
    if algorithm is None or DIGEST_SIZES[digest_alg] != len(file_digest):
        return SignatureCheck(
            False, "signature.invalid", f"cannot verify {digest_alg} signatures"
        )

    # 3. A known key must verify it.
    key = keyring.get(parsed.keyid)
    if key is None:
        return SignatureCheck(
            False, "signature.unknown_key", f"no key with keyid {parsed.keyid.hex()}"
        )
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(
                parsed.signature,
                file_digest,
                padding.PKCS1v15(),
                Prehashed(algorithm()),
            )
        else:
            key.verify(parsed.signature, file_digest, ec.ECDSA(Prehashed(algorithm())))
    except (InvalidSignature, UnsupportedAlgorithm, ValueError) as exc:
        name = type(exc).__name__
        return SignatureCheck(
            False,
            "signature.invalid",
            f"signature by key {parsed.keyid.hex()} does not verify ({name})",
        )
    return SignatureCheck(True)


def _certificate_keyid(cert: x509.Certificate) -> bytes | None:
    # The kernel names a certificate's key by its subject key identifier
    # (crypto/asymmetric_keys/x509_cert_parser.c); fall back to the computed id.
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    return ski.value.digest[-4:] if len(ski.value.digest) >= 4 else None


def _pem_blocks(data: bytes) -> Iterator[bytes]:
    start = data.find(b"-----BEGIN ")
    while start >= 0:
        end_marker = data.find(b"-----END ", start)
        if end_marker < 0:
            raise ValueError("PEM block without its END line")
        end = data.find(b"-----", end_marker + 9)
        if end < 0:
            raise ValueError("PEM END line is cut short")
        yield data[start : end + 5]
        start = data.find(b"-----BEGIN ", end + 5)
