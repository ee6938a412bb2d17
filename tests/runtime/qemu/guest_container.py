"""Run inside the QEMU guest: a runc bundle with a device vTPM, and its list replayed.

`python guest_container.py bundle DIR NAME` builds a small rootfs under DIR
(busybox, plus tpm2-tools and the libraries it loads) and writes config.json
with cvtpm's own bundle code: its hooks call `cvtpm hook`, its annotations ask
for a vTPM exposed as a device. `replay NAME` reads the container's list as
`cvtpm log --format binary` prints it and replays it as a verifier does,
printing PCR 10 of the sha256 bank as JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from cvtpm.config import Paths
from cvtpm.ima.binary import parse_binary
from cvtpm.ima.replay import replay
from cvtpm.runtime.bundle import RunSpec, oci_config, write_bundle

BUSYBOX = Path("/bin/busybox")
# tpm2-tools is one multi-call binary; the TCTI library is loaded with dlopen,
# so ldd on the binary does not name it.
TPM2_TOOLS = Path("/usr/bin/tpm2")
TCTI_DEVICE = Path("/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0")

# The container's program: what it sees in /dev, then PCR 10 through both
# devices. Nothing runs after the last read, so the list is final by then.
CONTAINER_SCRIPT = (
    "ls -l /dev/tpm0 /dev/tpmrm0 && "
    "echo via=tpmrm0 && tpm2_pcrread -T device:/dev/tpmrm0 sha256:10 && "
    "echo via=tpm0 && tpm2_pcrread -T device:/dev/tpm0 sha256:10"
)


def _libraries(binary: Path) -> list[Path]:
    """The shared objects `binary` loads, as ldd resolves them."""
    out = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    found = re.findall(r"=> (/\S+)", out) + re.findall(r"^\s*(/\S+) \(", out, re.M)
    return [Path(p) for p in found]


def _copy_in(rootfs: Path, path: Path) -> None:
    target = rootfs / path.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, target)


def build_rootfs(rootfs: Path) -> None:
    """A busybox rootfs with tpm2_pcrread and its libraries at their usual paths."""
    for directory in ("bin", "dev", "proc", "sys", "run", "tmp", "usr/bin"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in ("sh", "ls", "echo", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")

    for binary in (TPM2_TOOLS, TCTI_DEVICE):
        _copy_in(rootfs, binary)
        for library in _libraries(binary):
            _copy_in(rootfs, library)
    (rootfs / "usr" / "bin" / "tpm2_pcrread").symlink_to("tpm2")


def bundle(base: Path, name: str) -> Path:
    """Write the rootfs and config.json of container `name` under `base`."""
    rootfs = base / "rootfs"
    build_rootfs(rootfs)
    spec = RunSpec(
        rootfs=rootfs,
        args=["/bin/sh", "-c", CONTAINER_SCRIPT],
        name=name,
        expose="device",
    )
    executable = Path(sys.executable).parent / "cvtpm"
    config = oci_config(spec, executable, Paths.from_env())
    return write_bundle(base / "bundle", config)


def replayed_pcr10(name: str) -> dict:
    """PCR 10 (sha256) replayed from the list `cvtpm log NAME --format binary` gives."""
    cvtpm = Path(sys.executable).parent / "cvtpm"
    data = subprocess.run(
        [str(cvtpm), "log", name, "--format", "binary"],
        capture_output=True,
        check=True,
        env=os.environ,
    ).stdout
    entries = parse_binary(data)
    return {
        "entries": len(entries),
        "first": entries[0].path if entries else None,
        "paths": [e.path for e in entries],
        "sha256_pcr10": "0x" + replay(entries, "sha256", pcr=10).hex(),
    }


def main(argv: list[str]) -> int:
    """Dispatch `bundle DIR NAME` or `replay NAME` and print facts as JSON."""
    if argv[0] == "bundle":
        facts = {"bundle": str(bundle(Path(argv[1]), argv[2]))}
    else:
        facts = replayed_pcr10(argv[1])
    print("facts=" + json.dumps(facts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
