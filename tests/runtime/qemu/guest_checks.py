"""The checks the QEMU guest runs in its one boot, in order; tests read the results.

Each check is a shell snippet run with `sh -e` as root in the guest. Later
checks may use what earlier ones left in the guest's /run (a started vTPM),
so a failure early on shows up in the later checks' output too.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .guest import REPO_ROOT, GuestChecks

HERE = Path(__file__).resolve().parent
# Under the guest's own tmpfs /run, never the host's /tmp seen through the overlay.
CONTAINER_DIR = "/run/cvtpm-tests/container"
CONTAINER_NAME = "qemu-ctr"


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
    """The kernel's vtpm-proxy, which the daemon's device exposure needs."""
    checks.add(
        "vtpmx",
        """
        if [ -e /dev/vtpmx ]; then echo before=present; else echo before=absent; fi
        modprobe tpm_vtpm_proxy
        stat -c 'after=%F %t:%T' /dev/vtpmx
        """,
    )


def container_checks(checks: GuestChecks) -> None:
    """A runc container given a device vTPM by `cvtpm daemon` through its OCI hook."""
    env = f"""
        export CVTPM_STATE_DIR={CONTAINER_DIR}/state
        export CVTPM_RUN_DIR={CONTAINER_DIR}/run
    """
    checks.add(
        "daemon_start",
        env
        + f"""
        mkdir -p $CVTPM_STATE_DIR $CVTPM_RUN_DIR
        # No pool: certifying spare vTPMs only costs time under emulation.
        cvtpm -v daemon --pool 0 > {CONTAINER_DIR}/daemon.log 2>&1 &
        echo $! > {CONTAINER_DIR}/daemon.pid
        # Importing the daemon's libraries is slow under emulation.
        tries=0
        while [ ! -S $CVTPM_RUN_DIR/daemon.sock ]; do
            if ! kill -0 $(cat {CONTAINER_DIR}/daemon.pid) 2>/dev/null; then
                echo "cvtpm daemon exited:"; cat {CONTAINER_DIR}/daemon.log; exit 1
            fi
            tries=$((tries + 1))
            if [ $tries -gt 900 ]; then
                echo "no daemon socket after 180 s:"; cat {CONTAINER_DIR}/daemon.log
                exit 1
            fi
            sleep 0.2
        done
        echo daemon=up
        """,
        timeout=200,
    )
    checks.add(
        "container_run",
        env
        + f"""
        $PYTHON $HERE/guest_container.py bundle {CONTAINER_DIR}/ctr {CONTAINER_NAME}
        status=0
        runc run --bundle {CONTAINER_DIR}/ctr/bundle {CONTAINER_NAME} || status=$?
        echo "runc=$status"
        if [ $status -ne 0 ]; then
            echo "--- cvtpm daemon log ---"; tail -n 40 {CONTAINER_DIR}/daemon.log
        fi
        exit $status
        """,
        timeout=300,
    )
    checks.add(
        "container_replay",
        env
        + f"""
        $PYTHON $HERE/guest_container.py replay {CONTAINER_NAME}
        """,
    )
    checks.add(
        "daemon_stop",
        f"""
        pid=$(cat {CONTAINER_DIR}/daemon.pid)
        kill -TERM $pid
        tries=0
        while kill -0 $pid 2>/dev/null && [ $tries -lt 150 ]; do
            tries=$((tries + 1)); sleep 0.2
        done
        if kill -0 $pid 2>/dev/null; then echo daemon=running; else echo daemon=gone; fi
        ls /dev/tpm* 2>/dev/null || echo devices=none
        """,
    )


def all_checks() -> GuestChecks:
    """Every check of the QEMU tier, in the order the guest runs them."""
    checks = GuestChecks(prologue=prologue())
    device_checks(checks)
    container_checks(checks)
    return checks
