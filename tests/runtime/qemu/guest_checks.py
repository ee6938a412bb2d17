"""The checks the QEMU guest runs in its one boot, in order; tests read the results.

Each check is a shell snippet run with `sh -e` as root in the guest. Later
checks may use what earlier ones left in the guest's /tmp (a started vTPM),
so a failure early on shows up in the later checks' output too.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .guest import REPO_ROOT, GuestChecks

HERE = Path(__file__).resolve().parent
DEVICE_DIR = "/tmp/cvtpm-device"

# The digest extended into PCR 10 through /dev/tpmrmN by the `extend` check.
EXTEND_DIGEST = "c0ffee" * 10 + "c0ff"


def prologue() -> str:
    """Shell lines every check sees: the venv's python and cvtpm first on PATH."""
    venv_bin = Path(sys.executable).parent
    return "\n".join(
        [
            f"export PATH={venv_bin}:$PATH",
            f"export PYTHON={sys.executable}",
            f"export REPO={REPO_ROOT}",
            f"export HERE={HERE}",
            # No bytecode writes into the overlay: they only cost time here.
            "export PYTHONDONTWRITEBYTECODE=1",
        ]
    )


def device_checks(checks: GuestChecks) -> None:
    """vtpm-proxy through cvtpm.vtpm.vtpm_proxy, then tpm2-tools on the devices."""
    checks.add(
        "vtpmx",
        """
        if [ -e /dev/vtpmx ]; then echo before=present; else echo before=absent; fi
        modprobe tpm_vtpm_proxy
        stat -c 'after=%F %t:%T' /dev/vtpmx
        """,
    )
    checks.add(
        "device_start",
        f"""
        $PYTHON $HERE/guest_device.py start {DEVICE_DIR}
        . {DEVICE_DIR}/env
        stat -c 'node %n %F %t:%T' $TPM $TPMRM
        """,
    )
    checks.add(
        "pcrread_tpm",
        f"""
        . {DEVICE_DIR}/env
        tpm2_pcrread -T device:$TPM sha256:10
        """,
    )
    checks.add(
        "pcrread_tpmrm",
        f"""
        . {DEVICE_DIR}/env
        tpm2_pcrread -T device:$TPMRM sha256:10
        """,
    )
    checks.add(
        "extend",
        f"""
        . {DEVICE_DIR}/env
        tpm2_pcrextend -T device:$TPMRM 10:sha256={EXTEND_DIGEST}
        tpm2_pcrread -T device:$TPM sha256:10
        """,
    )
    checks.add(
        "device_stop",
        f"""
        $PYTHON $HERE/guest_device.py stop {DEVICE_DIR}
        """,
    )


def all_checks() -> GuestChecks:
    """Every check of the QEMU tier, in the order the guest runs them."""
    checks = GuestChecks(prologue=prologue())
    device_checks(checks)
    return checks
