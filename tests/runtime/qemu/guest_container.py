"""Run inside the QEMU guest: a runc bundle with a device vTPM, and its list replayed.

`python guest_container.py bundle DIR NAME` builds a small rootfs under DIR
(busybox, plus tpm2-tools and the libraries it loads) and writes config.json
with cvtpm's own bundle code: its hooks call `cvtpm-hook`, its annotations ask
for a vTPM exposed as a device. `replay NAME` reads the container's list as
`cvtpm log --format binary` prints it and replays it as a verifier does,
printing PCR 10 of the sha256 bank as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cvtpm.config import Paths
from cvtpm.ima.binary import parse_binary
from cvtpm.ima.replay import replay
from cvtpm.runtime.bundle import RunSpec, oci_config, write_bundle
from cvtpm.runtime.rootfs import busybox_rootfs, tpm2_tools_binds

# The container's program: what it sees in /dev, an extend of PCR 10 that the
# daemon must refuse, then PCR 10 through both devices. Nothing runs after the
# last read, so the list is final by then.
CONTAINER_SCRIPT = (
    "ls -l /dev/tpm0 /dev/tpmrm0 && "
    "{ tpm2 pcrextend -T device:/dev/tpmrm0 10:sha256=" + "00" * 32 + " 2>&1; "
    "echo extend10=$?; } && "
    "echo via=tpmrm0 && tpm2 pcrread -T device:/dev/tpmrm0 sha256:10 && "
    "echo via=tpm0 && tpm2 pcrread -T device:/dev/tpm0 sha256:10"
)


def build_rootfs(rootfs: Path) -> None:
    """A busybox rootfs with tpm2-tools and the libraries it loads copied in.

    Copied rather than bind-mounted (as `cvtpm run --tpm2-tools` does): files of
    the container's own root mount are what its list measures.
    """
    busybox_rootfs(rootfs)
    for host, inside in tpm2_tools_binds():
        target = rootfs / inside.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host, target)


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
    config = oci_config(spec, Paths.from_env())
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
