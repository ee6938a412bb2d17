"""Run inside the QEMU guest: start and stop a device-mode vTPM with cvtpm's own code.

`python guest_device.py start DIR` starts swtpm through
`cvtpm.vtpm.vtpm_proxy.start` with fresh state under DIR and prints the device
as one JSON line; `client DIR` extends and reads a PCR through it with
cvtpm's TpmClient (the daemon's path to a device vTPM); `resume DIR` starts it
again on the saved state; `stop DIR`
stops it through the control channel and prints whether the kernel removed the
devices. The host-side tests read these lines.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path

from cvtpm.tpm.client import TpmClient
from cvtpm.vtpm import swtpm, vtpm_proxy
from cvtpm.vtpm.swtpm import SwtpmPaths

# PCR 23 is free for applications (TCG PC Client PFP, section 2.3.4); the
# `client` action extends it so that PCR 10, which the other checks read, stays.
CLIENT_PCR = 23
CLIENT_DIGEST = bytes(range(32))


def _paths(base: Path) -> SwtpmPaths:
    return SwtpmPaths(state_dir=base / "state", run_dir=base / "run")


def start(base: Path, resume: bool = False) -> dict:
    """Start the vTPM under `base` as a vtpm-proxy chip: fresh, or resumed."""
    key_file = base / "key"
    if not resume:
        # The guest's /run is a throw-away tmpfs: keeping the key there is fine.
        key_file.write_bytes(secrets.token_bytes(32))
    device = vtpm_proxy.start(_paths(base), key_file.read_bytes(), resume=resume)
    facts = {
        "number": device.number,
        "tpm": str(device.tpm),
        "tpmrm": str(device.tpmrm),
        "tpm_devnum": list(device.tpm_devnum),
        "tpmrm_devnum": list(device.tpmrm_devnum),
        "pid": device.pid,
        "tcti": device.tcti,
        "running": swtpm.is_running(device.pid),
    }
    (base / "device.json").write_text(json.dumps(facts))
    # For the shell checks that follow: `. DIR/env` sets TPM and TPMRM.
    (base / "env").write_text(f"TPM={device.tpm}\nTPMRM={device.tpmrm}\n")
    return facts


def client(base: Path) -> dict:
    """Extend and read PCR 23 with cvtpm's TpmClient over the device TCTI."""
    facts = json.loads((base / "device.json").read_text())
    with TpmClient(facts["tcti"]) as tpm:
        banks = tpm.active_banks()
        tpm.pcr_extend(CLIENT_PCR, {"sha256": CLIENT_DIGEST})
        value = tpm.pcr_read(CLIENT_PCR, ["sha256"])["sha256"]
    return {"banks": banks, "pcr23_sha256": value.hex()}


def stop(base: Path) -> dict:
    """Stop the vTPM started by `start` and wait for the kernel to drop its chip."""
    facts = json.loads((base / "device.json").read_text())
    swtpm.stop(_paths(base), facts["pid"])

    deadline = time.monotonic() + 30
    tpm = Path(facts["tpm"])
    while tpm.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"running": swtpm.is_running(facts["pid"]), "tpm_exists": tpm.exists()}


def main(argv: list[str]) -> int:
    """Dispatch `start|client|resume|stop DIR` and print the facts as JSON."""
    action, base = argv[0], Path(argv[1])
    base.mkdir(parents=True, exist_ok=True)
    actions = {
        "start": lambda: start(base),
        "resume": lambda: start(base, resume=True),
        "client": lambda: client(base),
        "stop": lambda: stop(base),
    }
    facts = actions[action]()
    print("facts=" + json.dumps(facts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
