"""A real swtpm with an EK, an AK, certificates from a local CA, and a list."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cvtpm.ca.authority import LocalCa, TpmIdentity
from cvtpm.ima.binary import encode_binary
from cvtpm.ima.entry import Entry, boot_aggregate, ima_ng
from cvtpm.tpm.client import TpmClient
from cvtpm.tpm.structures import unmarshal_tpm2b_public
from cvtpm.tpm.templates import ak_template, ek_template

EK_HANDLES = {"ecc": 0x81010002, "rsa": 0x81010001}
AK_HANDLE = 0x81010003
BANKS = ["sha1", "sha256", "sha384", "sha512"]


def start_swtpm(directory: Path) -> subprocess.Popen:
    """A bare swtpm on a unix socket in `directory`, started and ready."""
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "tpm.sock"
    proc = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={directory}",
            "--server",
            f"type=unixio,path={sock}",
            "--ctrl",
            f"type=unixio,path={sock}.ctrl",
            "--flags",
            "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Ready once the data socket accepts a connection, not merely exists.
    for _ in range(500):
        if proc.poll() is not None:
            break
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(sock))
            return proc
        except OSError:
            time.sleep(0.01)
    proc.kill()
    raise RuntimeError("swtpm did not come up")


@dataclass
class Vtpm:
    """A vTPM as cvtpm.vtpm.VtpmInfo describes it, plus the list the test writes."""

    name: str
    tcti: str
    ek_handle: int
    ak_handle: int
    ek_cert_pem: str
    ak_cert_pem: str
    ca_chain_pem: str
    banks: list[str]
    list_path: Path
    ak_public: bytes = b""
    ek_public: bytes = b""
    entries: list[Entry] = field(default_factory=list)

    def client(self) -> TpmClient:
        """A fresh connection to this vTPM."""
        return TpmClient(self.tcti)

    def measure(self, entries: list[Entry], extend: bool = True) -> None:
        """Append entries to the list and, unless told not to, extend PCR 10."""
        with self.client() as tpm:
            for entry in entries:
                if extend:
                    digests = {b: entry.pcr_extend_digest(b) for b in self.banks}
                    tpm.pcr_extend(10, digests)
                self.entries.append(entry)
        self.write_list()

    def write_list(self, entries: list[Entry] | None = None) -> None:
        """(Re)write the binary list from `entries` (default: what was measured)."""
        chosen = self.entries if entries is None else entries
        self.list_path.write_bytes(b"".join(encode_binary(e) for e in chosen))


def files(count: int, start: int = 0, prefix: str = "/usr/bin/tool") -> list[Entry]:
    """`count` distinct ima-ng entries."""
    return [
        ima_ng(f"{prefix}{i}", hashlib.sha256(f"{prefix}{i}".encode()).digest())
        for i in range(start, start + count)
    ]


def make_vtpm(tmp: Path, ca: LocalCa, key_type: str = "ecc", name: str = "web") -> Vtpm:
    """Provision a swtpm like the vTPM manager does: EK, AK, certificates."""
    tcti = f"swtpm:path={tmp / 'tpm.sock'}"
    with TpmClient(tcti) as tpm:
        ek, _ = tpm.create_persistent_primary(
            ek_template(key_type).marshal(), EK_HANDLES[key_type]
        )
        ak, _ = tpm.create_persistent_primary(ak_template("ecc").marshal(), AK_HANDLE)
    ek_pub = unmarshal_tpm2b_public(ek)
    ak_pub = unmarshal_tpm2b_public(ak)
    ek_cert = ca.issue_ek_certificate(ek_pub.public_key(), TpmIdentity(0x1014, "SW", 1))
    ak_cert = ca.issue_ak_certificate(ak_pub.public_key(), name)
    pem = _pem
    vtpm = Vtpm(
        name=name,
        tcti=tcti,
        ek_handle=EK_HANDLES[key_type],
        ak_handle=AK_HANDLE,
        ek_cert_pem=pem(ek_cert),
        ak_cert_pem=pem(ak_cert),
        ca_chain_pem=ca.chain_pem.decode(),
        banks=list(BANKS),
        list_path=tmp / "binary_runtime_measurements",
        ak_public=ak_pub.raw,
        ek_public=ek_pub.raw,
    )
    vtpm.measure([boot_aggregate(None)])
    return vtpm


def _pem(cert) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="session")
def local_ca(tmp_path_factory) -> LocalCa:
    """cvtpm's local CA in a temporary directory."""
    return LocalCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory) -> LocalCa:
    """A CA nobody trusts."""
    return LocalCa(tmp_path_factory.mktemp("other-ca"))


@pytest.fixture
def swtpm_dir(short_tmp):
    """A running swtpm in a temporary directory, killed after the test."""
    if shutil.which("swtpm") is None:
        pytest.fail("swtpm is not installed")
    proc = start_swtpm(short_tmp / "tpm")
    yield short_tmp / "tpm"
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


@pytest.fixture
def vtpm(swtpm_dir, local_ca) -> Vtpm:
    """A provisioned ECC vTPM whose list holds boot_aggregate."""
    return make_vtpm(swtpm_dir, local_ca)
