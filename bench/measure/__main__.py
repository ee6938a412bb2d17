"""Benchmark of the measurement agent: exec latency in a container, hashing rate.

    python -m bench.measure [--execs N] [--new N]

Exec latency is timed inside the container, one exec at a time, by a small
static program (exectime.c) that spawns a program and waits for it: with no
agent; under a fanotify responder in C that allows everything (allowall.c),
the floor of any measurement by permission events; with the agent and an
already measured program (cache hit), the same with the agent polling for 2
ms after each event (--busy-poll 2000), and with the agent hashing a new
program (a distinct 2 MB busybox copy) every time.
The figures are the median and 99th percentile of each, and what the agent
adds to those of no agent. The hashing rate compares cvtpm's fd hashing with
`sha256sum` on the same files, read from page cache. Results go to
bench/results/measure.json.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.measure.conftest import Swtpm
from tests.support.runc import Bundle, Runc, make_program

from cvtpm.ima.policy import DEFAULT_CONTAINER_POLICY, parse_policy
from cvtpm.measure.agent import Agent
from cvtpm.measure.container import ContainerSpec
from cvtpm.measure.hashing import hash_fd
from cvtpm.measure.mounts import container_mounts

RESULTS = Path(__file__).resolve().parent.parent / "results" / "measure.json"
EXECTIME = Path(__file__).resolve().parent / "exectime.c"
ALLOWALL = Path(__file__).resolve().parent / "allowall.c"


def build_exectime(rootfs: Path) -> str:
    """Compile exectime.c statically into the rootfs; its path inside."""
    target = rootfs / "opt" / "exectime"
    target.parent.mkdir(parents=True, exist_ok=True)
    gcc = shutil.which("gcc") or "gcc"
    subprocess.run(
        [gcc, "-O2", "-static", "-o", str(target), str(EXECTIME)], check=True
    )
    return "/opt/exectime"


def build_allowall(work: Path) -> str:
    """Compile allowall.c for the host; its path."""
    target = work / "allowall"
    gcc = shutil.which("gcc") or "gcc"
    subprocess.run([gcc, "-O2", "-o", str(target), str(ALLOWALL)], check=True)
    return str(target)


def run_container(
    runc: Runc,
    bundle: Bundle,
    agent: Agent | None,
    tpm,
    name: str,
    responder: str | None = None,
):
    """Run the bundle's process to its end, measured by `agent` if there is
    one, or under the allow-all `responder`, marking the same mounts."""
    cid, pid = runc.create(bundle)
    if agent is not None:
        agent.add_container(ContainerSpec(name, bundle.directory / name, tpm, pid=pid))
    allowing = None
    if responder is not None:
        allowing = subprocess.Popen(
            [responder, *container_mounts(pid, str(bundle.rootfs))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert allowing.stdout.readline() == "ready\n"
    pidfd = os.pidfd_open(pid)
    try:
        runc.start(cid)
        select.select([pidfd], [], [])
    finally:
        os.close(pidfd)
        if allowing is not None:
            allowing.kill()
            allowing.wait()
    runc.wait(cid)
    if agent is not None:
        agent.remove_container(name)


def percentiles(samples: list[float]) -> dict[str, float]:
    """Median and 99th percentile of `samples`, in microseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"median_us": statistics.median(ordered), "p99_us": p99, "n": len(ordered)}


def exec_latency(work: Path, execs: int, new: int) -> dict[str, dict[str, float]]:
    """Per-exec latency in each configuration, and what the agent adds."""
    runc = Runc(work / "runc-root")
    tpm = Swtpm(work / "swtpm")
    tpm.start()
    bundle = Bundle(work / "bundle")
    timer = build_exectime(bundle.rootfs)
    allowall = build_allowall(work)
    make_program(bundle.rootfs, "/opt/same", b"same")
    for i in range(new):
        make_program(bundle.rootfs, f"/opt/n{i}", i.to_bytes(4, "big"))
    agents = {
        "default": Agent(parse_policy(DEFAULT_CONTAINER_POLICY)),
        "busy_poll": Agent(parse_policy(DEFAULT_CONTAINER_POLICY), busy_poll=0.002),
    }
    for agent in agents.values():
        agent.start()

    def timed(
        count: int, program: str, agent: Agent | None, responder: str | None = None
    ) -> list[float]:
        samples = bundle.rootfs / "data" / "samples"
        bundle.set_script(f"{timer} {count} /data/samples {program}")
        client = tpm.client() if agent is not None else None
        try:
            run_container(runc, bundle, agent, client, "list", responder)
        finally:
            if client is not None:
                client.close()
        return [int(line) / 1000 for line in samples.read_text().split()]

    try:
        plain: list[float] = []
        allowed: list[float] = []
        cached: dict[str, list[float]] = {name: [] for name in agents}
        # Interleaved rounds, so that a slow moment of the machine hits all.
        for _ in range(3):
            plain += timed(execs, "/opt/same/true", None)
            allowed += timed(execs, "/opt/same/true", None, allowall)
            for name, agent in agents.items():
                # A new container's first exec is measured: drop it.
                cached[name] += timed(execs + 1, "/opt/same/true", agent)[1:]
        hashed = timed(new, "/opt/n%ld/true", agents["default"])
    finally:
        for agent in agents.values():
            agent.stop()
        tpm.stop()
        runc.cleanup()

    base = percentiles(plain)
    out = {"no_agent": base}
    for label, samples in (
        ("allow_all_responder", allowed),
        ("agent_cached", cached["default"]),
        ("agent_cached_busy_poll", cached["busy_poll"]),
        ("agent_new_file", hashed),
    ):
        figures = percentiles(samples)
        figures["added_median_us"] = figures["median_us"] - base["median_us"]
        figures["added_p99_us"] = figures["p99_us"] - base["p99_us"]
        out[label] = figures
    return out


def hash_rate(work: Path) -> dict[str, float]:
    """GB/s of hash_fd and of sha256sum over a large file and many small ones."""
    big = work / "big"
    with open(big, "wb") as f:
        for _ in range(256):
            f.write(os.urandom(1 << 20))
    small = [work / f"small{i}" for i in range(100)]
    busybox = Path("/bin/busybox").read_bytes()
    for i, path in enumerate(small):
        path.write_bytes(busybox + i.to_bytes(4, "big"))

    out = {}
    for label, files in (("large", [big]), ("busybox_copies", small)):
        total = sum(p.stat().st_size for p in files)
        subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)

        start = time.perf_counter()
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            hash_fd(fd)
            os.close(fd)
        ours = total / (time.perf_counter() - start) / 1e9

        start = time.perf_counter()
        subprocess.run(
            ["sha256sum", *map(str, files)], stdout=subprocess.DEVNULL, check=True
        )
        theirs = total / (time.perf_counter() - start) / 1e9
        out[f"{label}_cvtpm_gbps"] = ours
        out[f"{label}_sha256sum_gbps"] = theirs
    return out


def main() -> None:
    """Run both benchmarks, print a table, write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=1000)
    parser.add_argument("--new", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cvtpm-bench-") as tmp:
        latency = exec_latency(Path(tmp), args.execs, args.new)
        rates = hash_rate(Path(tmp))
    results = {"exec_latency": latency, "hash_rate": rates, "execs": args.execs}

    print(f"{'exec latency (us)':<30}{'median':>9}{'p99':>9}{'+median':>9}{'+p99':>9}")
    for key, value in latency.items():
        added = (value.get("added_median_us"), value.get("added_p99_us"))
        extra = "".join(f"{a:>9.0f}" for a in added if a is not None)
        print(f"{key:<30}{value['median_us']:>9.0f}{value['p99_us']:>9.0f}{extra}")
    print(f"\n{'hashing (page cache)':<30}{'GB/s':>9}{'x sha256sum':>12}")
    for label in ("large", "busybox_copies"):
        ours, theirs = rates[f"{label}_cvtpm_gbps"], rates[f"{label}_sha256sum_gbps"]
        print(f"{label + ' cvtpm':<30}{ours:>9.2f}{ours / theirs:>12.2f}")
        print(f"{label + ' sha256sum':<30}{theirs:>9.2f}{1:>12.2f}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
