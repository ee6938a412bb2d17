"""The vTPM manager against real swtpm, checked with tpm2-tools and openssl."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cvtpm.errors import ConfigError, StateError, UsageError
from cvtpm.vtpm.manager import VtpmManager
from cvtpm.vtpm.supervisor import Supervisor

pytestmark = pytest.mark.swtpm


def _tools(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=True)


def _pcr10(tcti: str, bank: str = "sha256") -> str:
    out = _tools("tpm2_pcrread", "-T", tcti, f"{bank}:10").stdout
    return out.strip().rsplit("0x", 1)[1].lower()


def test_tpm2_pcrread_works_unchanged(manager):
    """tpm2_pcrread reaches a created vTPM through its TCTI and sees all four banks."""
    info = manager.create("pcrs")

    out = _tools("tpm2_pcrread", "-T", info.tcti, "sha1:10+sha256:10").stdout

    assert "sha1:" in out and "sha256:" in out
    assert _pcr10(info.tcti) == "00" * 32
    assert info.banks == ["sha1", "sha256", "sha384", "sha512"]


@pytest.mark.parametrize(
    ("ek", "nv_index", "key_class"),
    [
        ("ecc", "0x01c0000a", ec.EllipticCurvePublicKey),
        ("rsa", "0x01c00002", rsa.RSAPublicKey),
    ],
)
def test_ek_certificate_in_nv_verifies_against_ca_chain(
    manager, short_tmp, ek, nv_index, key_class
):
    """The EK certificate, read from its TCG NV index, passes `openssl verify`."""
    info = manager.create(f"ek-{ek}", ek_types=[ek])
    der = short_tmp / "ek.der"
    pem = short_tmp / "ek.pem"
    chain = short_tmp / "chain.pem"
    chain.write_text(info.ca_chain_pem)

    _tools("tpm2_nvread", "-T", info.tcti, nv_index, "-o", str(der))
    _tools("openssl", "x509", "-inform", "der", "-in", str(der), "-out", str(pem))
    verified = _tools("openssl", "verify", "-CAfile", str(chain), str(pem))

    assert verified.stdout.strip().endswith("OK")
    cert = x509.load_der_x509_certificate(der.read_bytes())
    assert isinstance(cert.public_key(), key_class)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.ObjectIdentifier("2.23.133.8.1") in eku
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    tpm_name = san.value.get_values_for_type(x509.DirectoryName)[0]
    oids = {attr.oid.dotted_string for attr in tpm_name}
    assert oids == {"2.23.133.2.1", "2.23.133.2.2", "2.23.133.2.3"}


def test_ek_certificate_matches_the_tpm_ek(manager, short_tmp):
    """The certified key is the EK the TPM holds at the profile's persistent handle."""
    info = manager.create("ek-match")
    pem = short_tmp / "ek-tpm.pem"

    _tools(
        "tpm2_readpublic",
        "-T",
        info.tcti,
        "-c",
        "0x81010002",
        "-f",
        "pem",
        "-o",
        str(pem),
    )

    in_tpm = serialization.load_pem_public_key(pem.read_bytes())
    in_cert = x509.load_pem_x509_certificate(info.ek_cert_pem.encode()).public_key()
    assert in_tpm.public_numbers() == in_cert.public_numbers()


def test_ak_certificate_names_the_ak_in_the_tpm(manager, short_tmp):
    """The AK certificate chains to the CA and certifies the TPM's AK."""
    info = manager.create("ak")
    pem = short_tmp / "ak.pem"
    cert = short_tmp / "akcert.pem"
    chain = short_tmp / "chain.pem"
    cert.write_text(info.ak_cert_pem)
    chain.write_text(info.ca_chain_pem)

    _tools(
        "tpm2_readpublic",
        "-T",
        info.tcti,
        "-c",
        hex(info.ak_handle),
        "-f",
        "pem",
        "-o",
        str(pem),
    )

    assert _tools("openssl", "verify", "-CAfile", str(chain), str(cert)).returncode == 0
    in_tpm = serialization.load_pem_public_key(pem.read_bytes())
    in_cert = x509.load_pem_x509_certificate(info.ak_cert_pem.encode()).public_key()
    assert in_tpm.public_numbers() == in_cert.public_numbers()


def test_orderly_stop_and_start_keep_pcr10(manager):
    """PCR 10 extended before `stop` has the same value after `start`."""
    info = manager.create("resume")
    _tools("tpm2_pcrextend", "-T", info.tcti, "10:sha256=" + "ab" * 32)
    before = _pcr10(info.tcti)

    manager.stop("resume")
    report = manager.start("resume")

    assert report.resumed and report.lost == []
    assert _pcr10(info.tcti) == before != "00" * 32


def test_supervisor_restarts_killed_swtpm_and_says_what_was_lost(manager):
    """After kill -9 of swtpm the supervisor restarts it and reports lost PCR values."""
    info = manager.create("crash")
    reports = []
    restarted = threading.Event()
    supervisor = Supervisor(
        manager, on_restart=lambda r: (reports.append(r), restarted.set())
    )
    supervisor.watch("crash")
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()

    try:
        os.kill(info.pid, 9)
        assert restarted.wait(20)
    finally:
        supervisor.stop()
        thread.join(5)

    report = reports[0]
    assert not report.resumed
    assert "PCR values" in report.lost
    assert "restarted after an unclean stop" in report.describe()
    after = manager.get("crash")
    assert after.pid == report.pid != info.pid and after.restarts == 1
    # The permanent state survived: the same EK certificate is still in NV.
    with manager.client("crash") as tpm:
        assert tpm.nv_read(0x01C0000A) == x509.load_pem_x509_certificate(
            info.ek_cert_pem.encode()
        ).public_bytes(serialization.Encoding.DER)


def test_state_is_encrypted_and_root_only(manager, paths):
    """No state file holds the EK public key in the clear or is readable by others."""
    info = manager.create("secret")
    manager.stop("secret")
    ek = x509.load_pem_x509_certificate(info.ek_cert_pem.encode()).public_key()
    point = ek.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    x_coordinate = point[1:33]

    state_files = [
        p for p in manager.swtpm_paths("secret").state_dir.rglob("*") if p.is_file()
    ]
    assert any(p.name == "tpm2-00.permall" for p in state_files)
    for path in state_files:
        assert x_coordinate not in path.read_bytes(), path
    for path in [paths.state, *paths.state.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    assert stat.S_IMODE(paths.master_key.stat().st_mode) == 0o400
    assert stat.S_IMODE((paths.ca / "issuing.key").stat().st_mode) == 0o400


def test_corrupt_state_is_refused_and_kept_aside(manager, paths):
    """A damaged state file is refused clearly, set aside, and never replaced."""
    manager.create("damaged")
    manager.stop("damaged")
    state_dir = manager.swtpm_paths("damaged").state_dir
    state = state_dir / "tpm2-00.permall"
    damaged = bytearray(state.read_bytes())
    damaged[200] ^= 0xFF
    state.write_bytes(bytes(damaged))

    with pytest.raises(
        StateError, match="does not decrypt or failed its integrity check"
    ):
        manager.start("damaged")

    kept = list((state_dir / "quarantine").rglob("tpm2-00.permall"))
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(damaged)
    assert not state.exists()
    with pytest.raises(StateError, match="unreadable state"):
        manager.start("damaged")
    assert manager.get("damaged").state == "corrupt"


def test_wrong_master_key_is_refused(manager, paths):
    """State encrypted under another master key does not start as a fresh TPM."""
    manager.create("rekeyed")
    manager.stop("rekeyed")
    paths.master_key.chmod(0o600)
    paths.master_key.write_bytes(os.urandom(32))
    paths.master_key.chmod(0o400)

    with pytest.raises(StateError, match="does not decrypt"):
        VtpmManager(paths).start("rekeyed")


def test_missing_state_is_not_replaced_by_a_blank_tpm(manager, paths):
    """A vTPM whose state file vanished refuses to start instead of starting blank."""
    manager.create("vanished")
    manager.stop("vanished")
    (manager.swtpm_paths("vanished").permanent_state).unlink()

    with pytest.raises(StateError, match="refusing to start a blank TPM"):
        manager.start("vanished")


def test_one_state_never_runs_twice(manager, paths):
    """A second swtpm on a running vTPM's state is refused; managers share one."""
    from cvtpm.vtpm import swtpm

    info = manager.create("twice")
    other = swtpm.SwtpmPaths(
        state_dir=manager.swtpm_paths("twice").state_dir, run_dir=paths.run / "other"
    )

    pid = swtpm.spawn(other, manager._state_key(info.uuid))
    refused = swtpm.exit_reason(other, pid)
    assert refused is not None and "in use by another swtpm" in str(refused)

    second = VtpmManager(paths).start("twice")
    assert second.pid == info.pid


def test_concurrent_creates_of_one_name_make_one_vtpm(paths):
    """Two managers creating one name at once: one succeeds, one gets a clear error."""
    results = []

    def create():
        try:
            VtpmManager(paths).create("race")
            results.append("ok")
        except StateError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    try:
        assert sorted(results)[0] == "a vTPM named 'race' already exists"
        assert results.count("ok") == 1
    finally:
        VtpmManager(paths).delete("race")


def _swtpms_under(*directories: Path) -> list[int]:
    """Pids of swtpm processes whose command line names one of `directories`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(str(directory) in cmdline for directory in directories):
            found.append(int(proc.name))
    return found


def test_a_swtpm_that_exits_at_start_is_said_and_leaves_nothing(
    manager, paths, monkeypatch
):
    """Its first command fails; the error is what swtpm logged; nothing is left."""
    from cvtpm.vtpm import swtpm

    arguments = swtpm._command
    monkeypatch.setattr(
        swtpm, "_command", lambda *a: [*arguments(*a), "--flags", "bogus"]
    )
    with pytest.raises(StateError, match="swtpm failed to start: .*'bogus'"):
        manager.create("stillborn")

    assert manager.list() == []
    assert list(paths.vtpms.iterdir()) == []
    assert not any((paths.run / "vtpm").iterdir())
    assert _swtpms_under(paths.vtpms, paths.run) == []


def test_a_name_taken_leaves_no_second_swtpm(manager, paths):
    """The swtpm started before the name was found taken is gone, with its files."""
    manager.create("taken")
    with pytest.raises(StateError, match="already exists"):
        manager.create("taken")
    assert len(list(paths.vtpms.iterdir())) == 1
    assert _swtpms_under(paths.vtpms, paths.run) == [manager.get("taken").pid]


def test_delete_removes_state_and_process(manager, paths):
    """`delete` stops swtpm and removes the state directory and sockets."""
    info = manager.create("gone")
    where = manager.swtpm_paths("gone")

    manager.delete("gone")

    assert not where.state_dir.exists()
    assert not where.run_dir.exists()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{info.pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{info.pid}")
    assert manager.list() == []


def test_banks_can_be_chosen(manager):
    """--banks allocates exactly the chosen PCR banks."""
    info = manager.create("banks", banks=["sha256"])

    assert info.banks == ["sha256"]
    out = subprocess.run(
        ["tpm2_pcrread", "-T", info.tcti, "sha1:10"], capture_output=True, text=True
    )
    assert "sha1:" in out.stdout and "10:" not in out.stdout


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "../x"}, "invalid vTPM name"),
        ({"name": "ok", "ek_types": ["dsa"]}, "unknown EK type dsa"),
        ({"name": "ok", "banks": ["md5"]}, "unknown PCR bank md5"),
    ],
)
def test_bad_input_is_a_usage_error(manager, kwargs, message):
    """Bad names and choices are UsageErrors (exit 2) and leave nothing behind."""
    with pytest.raises(UsageError, match=message):
        manager.create(**kwargs)
    assert manager.list() == []


def test_missing_master_key_is_not_replaced_while_vtpms_exist(manager, paths):
    """With vTPM state on disk, a lost master key is an error, never a new key."""
    manager.create("keyed")
    manager.stop("keyed")
    paths.master_key.unlink()

    with pytest.raises(ConfigError, match="master key .* is missing"):
        VtpmManager(paths).start("keyed")
    assert not paths.master_key.exists()
    assert manager.swtpm_paths("keyed").permanent_state.exists()


def test_restored_state_starts_after_quarantine(manager, paths):
    """Copying the good state back over a quarantined vTPM lets it start again."""
    manager.create("restore")
    manager.stop("restore")
    state = manager.swtpm_paths("restore").permanent_state
    good = state.read_bytes()
    state.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    with pytest.raises(StateError):
        manager.start("restore")
    manager.stop("restore")
    assert manager.get("restore").state == "corrupt"

    state.write_bytes(good)
    report = manager.start("restore")

    assert manager.get("restore").state == "running"
    assert not report.resumed or report.lost == []


def test_vtpm_in_use_by_a_container_is_not_stopped_or_deleted(manager, paths):
    """stop and delete refuse while a running container uses the vTPM, unless forced."""
    manager.create("busy")
    record = paths.run / "containers" / "busy" / "container.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"name": "busy", "pid": os.getpid()}))

    with pytest.raises(StateError, match="in use by a running container"):
        manager.delete("busy")
    with pytest.raises(StateError, match="in use by a running container"):
        manager.stop("busy")
    assert manager.is_running("busy")

    manager.delete("busy", force=True)
    assert manager.list() == []
