"""cvtpm's local CA: a root, an issuing CA, and the EK and AK certificates it signs.

EK certificates follow the TCG EK Credential Profile for TPM Family 2.0 (v2.5,
section 3.2): empty subject, the TPM's manufacturer, model and version in a
critical subject alternative name, the tcg-kp-EKCertificate extended key usage,
and key usage keyEncipherment (RSA) or keyAgreement (ECC).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from cvtpm.ca._files import private_dir, write_private, write_public
from cvtpm.errors import ConfigError
from cvtpm.locking import exclusive

# TCG OIDs (TCG EK Credential Profile v2.5, section A.1).
OID_TPM_MANUFACTURER = x509.ObjectIdentifier("2.23.133.2.1")
OID_TPM_MODEL = x509.ObjectIdentifier("2.23.133.2.2")
OID_TPM_VERSION = x509.ObjectIdentifier("2.23.133.2.3")
OID_EK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.1")
OID_AK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.3")

_ROOT_YEARS = 20
_ISSUING_YEARS = 10
_LEAF_YEARS = 10

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class TpmIdentity:
    """The TPM fields an EK certificate's subject alternative name carries."""

    manufacturer: int
    model: str
    firmware_version: int


class LocalCa:
    """The root and issuing CA under one directory; created on first use."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.root_cert: x509.Certificate
        self.issuing_cert: x509.Certificate
        self._issuing_key: ec.EllipticCurvePrivateKey
        self._load_or_create()

    @property
    def chain_pem(self) -> bytes:
        """The issuing CA then the root, PEM, for verifiers and `openssl verify`."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM)
            for c in (self.issuing_cert, self.root_cert)
        )

    @property
    def root_pem(self) -> bytes:
        """The root certificate alone: what a verifier trusts."""
        return self.root_cert.public_bytes(serialization.Encoding.PEM)

    def issue_ek_certificate(
        self, public_key: PublicKey, tpm: TpmIdentity, serial: int | None = None
    ) -> x509.Certificate:
        """An EK certificate per the TCG EK Credential Profile for this TPM's EK."""
        tpm_name = x509.Name(
            [
                x509.RelativeDistinguishedName(
                    [
                        x509.NameAttribute(
                            OID_TPM_MANUFACTURER, f"id:{tpm.manufacturer:08X}"
                        ),
                        x509.NameAttribute(OID_TPM_MODEL, tpm.model or "unknown"),
                        x509.NameAttribute(
                            OID_TPM_VERSION, f"id:{tpm.firmware_version:08X}"
                        ),
                    ]
                )
            ]
        )
        if isinstance(public_key, rsa.RSAPublicKey):
            usage = _key_usage(key_encipherment=True)
        else:
            usage = _key_usage(key_agreement=True)

        # The profile (section 3.2.9) leaves the subject empty, which makes the
        # subject alternative name critical (RFC 5280, section 4.2.1.6).
        builder = (
            self._leaf_builder(public_key, x509.Name([]), serial)
            .add_extension(
                x509.SubjectAlternativeName([x509.DirectoryName(tpm_name)]),
                critical=True,
            )
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([OID_EK_CERTIFICATE]), critical=False)
        )
        return builder.sign(self._issuing_key, hashes.SHA256())

    def issue_ak_certificate(
        self, public_key: PublicKey, name: str, serial: int | None = None
    ) -> x509.Certificate:
        """An AK certificate, issued once the AK is shown to share the EK's TPM."""
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cvtpm"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name} attestation key"),
            ]
        )
        builder = (
            self._leaf_builder(public_key, subject, serial)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([OID_AK_CERTIFICATE]), critical=False)
        )
        return builder.sign(self._issuing_key, hashes.SHA256())

    def _leaf_builder(
        self, public_key: PublicKey, subject: x509.Name, serial: int | None
    ) -> x509.CertificateBuilder:
        """What every certificate this CA issues has in common."""
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.issuing_cert.subject)
            .public_key(public_key)
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365 * _LEAF_YEARS))
            .add_extension(
                x509.BasicConstraints(ca=False, path_length=None), critical=True
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.issuing_cert.public_key()
                ),
                critical=False,
            )
        )

    def _load_or_create(self) -> None:
        """Load the CA from its directory, creating it under a lock the first time."""
        private_dir(self.directory)
        # Two processes creating the CA at once must not make two roots.
        with exclusive(self.directory / ".lock"):
            if not (self.directory / "issuing.pem").exists():
                self._create()
            self._load()

    def _load(self) -> None:
        try:
            self.root_cert = x509.load_pem_x509_certificate(
                (self.directory / "root.pem").read_bytes()
            )
            self.issuing_cert = x509.load_pem_x509_certificate(
                (self.directory / "issuing.pem").read_bytes()
            )
            key = serialization.load_pem_private_key(
                (self.directory / "issuing.key").read_bytes(), password=None
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the local CA in {self.directory} cannot be read: {exc}; "
                "restore it from a backup (a new CA would orphan every vTPM's "
                "certificates)"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{self.directory / 'issuing.key'} is not an EC key")
        self._issuing_key = key

    def _create(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = _ca_name("cvtpm local root CA")
        root = (
            _ca_builder(
                root_name, root_name, root_key.public_key(), now, _ROOT_YEARS, 1
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    root_key.public_key()
                ),
                critical=False,
            )
            .sign(root_key, hashes.SHA384())
        )

        issuing_key = ec.generate_private_key(ec.SECP256R1())
        issuing = (
            _ca_builder(
                _ca_name("cvtpm EK and AK issuing CA"),
                root_name,
                issuing_key.public_key(),
                now,
                _ISSUING_YEARS,
                0,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    root_key.public_key()
                ),
                critical=False,
            )
            .sign(root_key, hashes.SHA384())
        )

        pem = serialization.Encoding.PEM
        write_private(self.directory / "root.key", _private_pem(root_key))
        write_private(self.directory / "issuing.key", _private_pem(issuing_key))
        write_public(self.directory / "root.pem", root.public_bytes(pem))
        # issuing.pem is written last: its presence means the CA is complete.
        write_public(self.directory / "issuing.pem", issuing.public_bytes(pem))


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cvtpm"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"{common_name} ({os.uname().nodename})"
            ),
        ]
    )


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    years: int,
    path_length: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * years))
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        )
        .add_extension(
            _key_usage(key_cert_sign=True, crl_sign=True, digital_signature=True),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )


def _key_usage(**chosen: bool) -> x509.KeyUsage:
    fields = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    fields.update(chosen)
    return x509.KeyUsage(**fields)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
