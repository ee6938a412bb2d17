"""Certificates: loading them as TPMs store them, and chaining them to trusted roots."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from cvtpm.errors import ConfigError, ParseError
from cvtpm.files import read_regular_file

MAX_CHAIN = 8  # longer chains than this are a loop or an attack, not a PKI


def load_certificate(data: bytes | str) -> x509.Certificate:
    """A certificate from PEM, or from DER followed by NV padding (zeros or 0xff).

    An EK certificate read from a TPM's NV index may be longer than the DER it
    holds (TCG EK Credential Profile 2.2.1.5 leaves the index size to the
    manufacturer), so only the bytes the outer DER SEQUENCE claims are used.
    """
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if raw.lstrip().startswith(b"-----BEGIN"):
        try:
            return x509.load_pem_x509_certificate(raw)
        except ValueError as exc:
            raise ParseError(f"certificate: bad PEM ({exc})") from None
    der = raw[: _der_length(raw)]
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise ParseError(f"certificate: bad DER ({exc})") from None


def _der_length(raw: bytes) -> int:
    """Total length of the DER SEQUENCE at the start of `raw` (X.690, 8.1.3)."""
    if len(raw) < 2 or raw[0] != 0x30:
        raise ParseError("certificate: not a DER SEQUENCE", offset=0)
    first = raw[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or len(raw) < 2 + count:
        raise ParseError("certificate: bad DER length", offset=1)
    total = 2 + count + int.from_bytes(raw[2 : 2 + count], "big")
    if total > len(raw):
        raise ParseError(
            f"certificate: DER says {total} bytes, {len(raw)} given", offset=1
        )
    return total


def load_certificates(data: bytes | str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (empty input gives an empty list)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if not raw.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(raw)
    except ValueError as exc:
        raise ParseError(f"certificate bundle: bad PEM ({exc})") from None


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint of a certificate's DER, as hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def to_pem(cert: x509.Certificate) -> str:
    """A certificate as PEM text."""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class TrustStore:
    """The roots a verifier trusts and intermediates it may use to reach them."""

    roots: list[x509.Certificate] = field(default_factory=list)
    intermediates: list[x509.Certificate] = field(default_factory=list)

    @classmethod
    def from_paths(cls, paths: list[str | Path]) -> TrustStore:
        """Load PEM files or directories of *.pem/*.crt; self-signed ones are roots."""
        store = cls()
        for path in map(Path, paths):
            files = sorted(path.glob("*.pem")) + sorted(path.glob("*.crt"))
            if path.is_dir() and not files:
                raise ConfigError(f"trust store directory {path} has no *.pem or *.crt")
            for file in files if path.is_dir() else [path]:
                if not file.exists():
                    raise ConfigError(f"trust store file {file} does not exist")
                data = read_regular_file(file, "trust store file")
                try:
                    store.add_pem(data)
                except ParseError as exc:
                    raise ParseError(f"trust store file {file}: {exc}") from None
        if not store.roots:
            raise ConfigError(
                f"no root certificate (self-signed) in {', '.join(map(str, paths))}:"
                " nothing could ever be trusted"
            )
        return store

    def add_pem(self, data: bytes | str) -> None:
        """Add every certificate of a PEM bundle: self-signed ones as roots."""
        for cert in load_certificates(data):
            if _self_signed(cert):
                self.roots.append(cert)
            else:
                self.intermediates.append(cert)

    def chain(
        self,
        leaf: x509.Certificate,
        extra: list[x509.Certificate] = (),
        at: datetime.datetime | None = None,
    ) -> list[x509.Certificate]:
        """The path from `leaf` to a trusted root; ChainError says why there is none."""
        when = at or datetime.datetime.now(datetime.UTC)
        pool = list(extra) + self.intermediates + self.roots
        root_fps = {fingerprint(r) for r in self.roots}
        path = [leaf]
        cert = leaf
        for _ in range(MAX_CHAIN):
            _check_validity(cert, when)
            if fingerprint(cert) in root_fps:
                return path
            issuer = _find_issuer(cert, pool)
            if issuer is None:
                raise ChainError(
                    f"no trusted issuer for {cert.issuer.rfc4514_string()!r}"
                )
            _check_ca(issuer)
            path.append(issuer)
            cert = issuer
        raise ChainError(f"no trusted root within {MAX_CHAIN} certificates")


class ChainError(Exception):
    """A certificate does not chain to a trusted root; the message says where."""


def _self_signed(cert: x509.Certificate) -> bool:
    """True if the certificate is its own issuer and verifies with its own key."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _find_issuer(
    cert: x509.Certificate, pool: list[x509.Certificate]
) -> x509.Certificate | None:
    """The certificate in `pool` whose subject and key issued `cert`."""
    for candidate in pool:
        if candidate.subject != cert.issuer or candidate is cert:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def _check_validity(cert: x509.Certificate, when: datetime.datetime) -> None:
    """Raise ChainError if `when` is outside the certificate's validity period."""
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise ChainError(
            f"{cert.subject.rfc4514_string() or 'certificate'} is not valid now"
            f" ({cert.not_valid_before_utc:%Y-%m-%d}"
            f" to {cert.not_valid_after_utc:%Y-%m-%d})"
        )


def _check_ca(cert: x509.Certificate) -> None:
    """Raise ChainError unless an issuer is marked as a CA (RFC 5280, 4.2.1.9)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise ChainError(
            f"issuer {cert.subject.rfc4514_string()} is not a CA"
        ) from None
    if not constraints.value.ca:
        raise ChainError(f"issuer {cert.subject.rfc4514_string()} is not a CA")
