"""cvtpm.vtpm.vtpm_proxy on the host: command line, parsing, and device discovery.

The kernel half of these (a real /dev/vtpmx) runs in the QEMU guest, see
test_device_mode.py; here sysfs and /dev are stand-in directories.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cvtpm.errors import ConfigError, ParseError, StateError
from cvtpm.vtpm import vtpm_proxy
from cvtpm.vtpm.swtpm import SwtpmPaths


def _fake_chip(root: Path, number: int, tpm: str, tpmrm: str) -> tuple[Path, Path]:
    sysfs, dev = root / "sys", root / "dev"
    (sysfs / "tpm" / f"tpm{number}").mkdir(parents=True)
    (sysfs / "tpmrm" / f"tpmrm{number}").mkdir(parents=True)
    (sysfs / "tpm" / f"tpm{number}" / "dev").write_text(tpm + "\n")
    (sysfs / "tpmrm" / f"tpmrm{number}" / "dev").write_text(tpmrm + "\n")
    dev.mkdir()
    return sysfs, dev


def test_parse_new_device_reads_swtpm_line():
    """The chip number and /dev/tpmN's numbers come from swtpm's announcement."""
    text = "New TPM device: /dev/tpm3 (major/minor = 253/3)\n"

    assert vtpm_proxy.parse_new_device(text) == (3, (253, 3))


def test_parse_new_device_rejects_other_output():
    """Output without the announcement is a ParseError quoting what swtpm said."""
    with pytest.raises(ParseError, match="Could not open"):
        vtpm_proxy.parse_new_device("swtpm: Could not open /dev/vtpmx\n")


@pytest.mark.parametrize("text", ["", "10", "10:", ":5", "a:b", "10:224:1"])
def test_read_devnum_rejects_malformed_files(tmp_path, text):
    """A sysfs dev file that is not MAJOR:MINOR is refused, not misread."""
    path = tmp_path / "dev"
    path.write_text(text)

    with pytest.raises(ParseError):
        vtpm_proxy.read_devnum(path)


def test_swtpm_command_uses_vtpm_proxy_and_keeps_control_on_host(tmp_path):
    """The command serves a new chip, encrypts state by fd and keeps a ctrl socket."""
    paths = SwtpmPaths(state_dir=tmp_path / "s", run_dir=tmp_path / "r")

    command = vtpm_proxy.swtpm_command(paths, 7, swtpm="swtpm")
    resumed = vtpm_proxy.swtpm_command(paths, 7, resume=True, swtpm="swtpm")

    assert command[:4] == ["swtpm", "chardev", "--vtpm-proxy", "--tpm2"]
    assert f"type=unixio,path={paths.ctrl_socket},mode=0600" in command
    assert "fd=7,mode=aes-256-cbc,format=binary" in command
    assert command[command.index("--flags") + 1] == "startup-clear"
    assert resumed[resumed.index("--flags") + 1] == "startup-state"
    assert "--daemon" in command


def test_require_vtpmx_explains_a_missing_driver(tmp_path):
    """Without /dev/vtpmx the error names the module to load."""
    with pytest.raises(ConfigError, match="modprobe tpm_vtpm_proxy"):
        vtpm_proxy.require_vtpmx(tmp_path / "vtpmx")


def test_wait_for_device_waits_for_the_nodes(tmp_path):
    """The device is returned only once both /dev nodes exist, with sysfs numbers."""
    sysfs, dev = _fake_chip(tmp_path, 2, "253:2", "254:65538")

    def appear() -> None:
        time.sleep(0.2)
        (dev / "tpm2").touch()
        (dev / "tpmrm2").touch()

    thread = threading.Thread(target=appear)
    thread.start()
    device = vtpm_proxy.wait_for_device(2, 10, sysfs=sysfs, dev=dev, pid=42)
    thread.join()

    assert device.tpm == dev / "tpm2" and device.tpmrm == dev / "tpmrm2"
    assert device.tpm_devnum == (253, 2)
    assert device.tpmrm_devnum == (254, 65538)
    assert device.pid == 42
    assert device.tcti == f"device:{dev / 'tpmrm2'}"


def test_wait_for_device_times_out(tmp_path):
    """A chip whose nodes never appear ends in a StateError, not a hang."""
    sysfs, dev = _fake_chip(tmp_path, 0, "10:224", "253:65536")

    with pytest.raises(StateError, match="did not create"):
        vtpm_proxy.wait_for_device(0, 0.2, sysfs=sysfs, dev=dev)
