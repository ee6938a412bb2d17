"""Benchmark: memory per vTPM, and a host with many provisioned, few running.

    python -m bench.memory [--running N] [--provisioned M]

PSS (proportional set size, /proc/PID/smaps_rollup) counts shared pages once
across processes, so summing it over the swtpm processes gives what they
really cost together. The alternative is a bare swtpm on a fresh state, the
least a vTPM can cost. Then M vTPMs are manufactured and handed to the idle
releaser the daemon uses (cvtpm.vtpm.idle); the N in use stay, the others are
released (their state stays on disk and costs no memory), and the total PSS of
the running ones plus the manager's process is reported. Last, the first TPM
command to a released vTPM (which starts it again) is timed against the same
command to a running one.
Results go to bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench._util import write
from cvtpm.config import Paths
from cvtpm.tpm.client import TpmClient
from cvtpm.vtpm.idle import IdleReleaser
from cvtpm.vtpm.manager import VtpmManager

MIB = 1024 * 1024


def pss(pid: int) -> int:
    """Bytes of PSS of one process."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss for pid {pid}")


def bare_swtpm_pss(work: Path, count: int) -> list[int]:
    """PSS of `count` bare swtpm processes running together."""
    procs = []
    for i in range(count):
        state = work / f"bare{i}"
        state.mkdir()
        procs.append(
            subprocess.Popen(
                [
                    "swtpm",
                    "socket",
                    "--tpm2",
                    "--tpmstate",
                    f"dir={state}",
                    "--server",
                    f"type=unixio,path={state}/s",
                    "--ctrl",
                    f"type=unixio,path={state}/s.ctrl",
                    "--flags",
                    "not-need-init,startup-clear",
                ],
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        )
    for i in range(count):
        while not (work / f"bare{i}" / "s.ctrl").exists():
            time.sleep(0.005)
    time.sleep(0.2)
    sizes = [pss(p.pid) for p in procs]
    for p in procs:
        p.kill()
        p.wait()
    return sizes


def release_idle(
    manager: VtpmManager, names: list[str], running: int, timed: int = 30
) -> tuple[float, float, int]:
    """Release all but the first `running` vTPMs as the daemon would when idle.

    Returns the median of the first TPM command (PCR read, connection
    included) to `timed` released vTPMs, which starts each again and releases
    it after, and of the same command to a running vTPM; and how many were
    released.
    """
    clock = [0.0]
    idle = IdleReleaser(manager, 60, clock=lambda: clock[0])
    for name in names:
        idle.track(name)
    clock[0] = 61
    for name in names[:running]:
        idle.touch(name)
    released = len(idle.sweep())

    def first_read(name: str) -> float:
        started = time.perf_counter()
        with idle.client(name, manager.get(name).tcti) as tpm:
            tpm.pcr_read(10, ["sha256"])
        return (time.perf_counter() - started) * 1000

    woken = names[running : running + timed]
    wake = [first_read(name) for name in woken]
    clock[0] += 61
    for name in names[:running]:
        idle.touch(name)
    idle.sweep()

    def running_read(name: str) -> float:
        started = time.perf_counter()
        with TpmClient(manager.get(name).tcti) as tpm:
            tpm.pcr_read(10, ["sha256"])
        return (time.perf_counter() - started) * 1000

    warm = [running_read(name) for name in names[: min(running, timed)]]
    return statistics.median(wake), statistics.median(warm), released


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--running", type=int, default=100)
    parser.add_argument("--provisioned", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=200)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="cvm", dir="/tmp"))
    manager = None
    try:
        bare = bare_swtpm_pss(work, args.sample)

        paths = Paths(state=work / "s", run=work / "r").ensure()
        manager = VtpmManager(paths)
        names = [f"m{i}" for i in range(args.provisioned)]
        started = time.perf_counter()
        for name in names:
            manager.create(name)
        manufacture_s = time.perf_counter() - started

        ours_all = [pss(manager.get(n).pid) for n in names[: args.sample]]
        wake_ms, running_ms, released = release_idle(manager, names, args.running)
        running = [pss(manager.get(n).pid) for n in names[: args.running]]
        manager_pss = pss(os.getpid())
        state_bytes = sum(
            f.stat().st_size for f in paths.vtpms.rglob("*") if f.is_file()
        )
    finally:
        if manager is not None:
            for info in manager.list():
                manager.delete(info.name)
        shutil.rmtree(work, ignore_errors=True)

    per_vtpm = sum(ours_all) / len(ours_all)
    per_bare = sum(bare) / len(bare)
    total = sum(running) + manager_pss
    result = {
        "sample": args.sample,
        "pss_per_vtpm_bytes": per_vtpm,
        "pss_per_bare_swtpm_bytes": per_bare,
        "ratio_vs_bare_swtpm": per_vtpm / per_bare,
        f"pss_{args.sample}_vtpms_bytes": sum(ours_all),
        "provisioned": args.provisioned,
        "running": args.running,
        "total_pss_bytes": total,
        "manager_pss_bytes": manager_pss,
        "state_on_disk_bytes": state_bytes,
        "manufacture_seconds": manufacture_s,
        "released_by_idle_releaser": released,
        "first_command_after_release_ms": wake_ms,
        "same_command_running_ms": running_ms,
        "ratio_wake_vs_running": wake_ms / running_ms,
    }
    path = write("memory", result)
    print(f"Memory (PSS), {args.sample} vTPMs running together")
    print(f"  per cvtpm vTPM:   {per_vtpm / MIB:6.2f} MiB")
    print(
        f"  per bare swtpm:   {per_bare / MIB:6.2f} MiB "
        f"(ratio {result['ratio_vs_bare_swtpm']:.2f})"
    )
    print(f"  {args.sample} vTPMs:        {sum(ours_all) / MIB:6.1f} MiB")
    print(
        f"  {args.provisioned} provisioned, {args.running} running: "
        f"{total / MIB:.1f} MiB in all (manager {manager_pss / MIB:.1f} MiB), "
        f"{state_bytes / MIB:.1f} MiB of state on disk"
    )
    print(
        f"  first command to a released vTPM: {wake_ms:.1f} ms "
        f"(running vTPM {running_ms:.2f} ms, "
        f"ratio {result['ratio_wake_vs_running']:.1f})"
    )
    print(f"  written to {path}")
    return result


if __name__ == "__main__":
    main()
