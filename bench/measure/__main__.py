"""Benchmark of the measurement agent: exec latency in a container, hashing rate.

    python -m bench.measure [--execs N] [--new N]

Exec latency is the wall time of a container running a loop of execs, minus
the same container with an empty loop, per exec: with no agent, with the agent
and an already measured program (cache hit), and with the agent hashing a new
program (a distinct 2 MB busybox copy) every time.  The hashing rate compares
cvtpm's fd hashing with `sha256sum` on the same files, read from page cache.
Results go to bench/results/measure.json.
"""

from __future__ import annotations

import argparse
import json
import os
import select
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

RESULTS = Path(__file__).resolve().parent.parent / "results" / "measure.json"


def run_timed(runc: Runc, bundle: Bundle, agent: Agent | None, tpm, name: str) -> float:
    """Seconds from `runc start` until the container's process has exited."""
    cid, pid = runc.create(bundle)
    if agent is not None:
        agent.add_container(ContainerSpec(name, bundle.directory / name, tpm, pid=pid))
    pidfd = os.pidfd_open(pid)
    start = time.perf_counter()
    runc.start(cid)
    select.select([pidfd], [], [])
    elapsed = time.perf_counter() - start
    os.close(pidfd)
    runc.wait(cid)
    if agent is not None:
        agent.remove_container(name)
    return elapsed


def exec_latency(work: Path, execs: int, new: int) -> dict[str, float]:
    """Microseconds per exec in each configuration."""
    runc = Runc(work / "runc-root")
    tpm = Swtpm(work / "swtpm")
    tpm.start()
    agent = Agent(parse_policy(DEFAULT_CONTAINER_POLICY))
    agent.start()
    try:
        bundle = Bundle(work / "bundle")
        make_program(bundle.rootfs, "/opt/same", b"same")
        for i in range(new + 2):
            make_program(bundle.rootfs, f"/opt/n{i}", i.to_bytes(4, "big"))

        def loop(count: int, program: str) -> str:
            return f"i=0; while [ $i -lt {count} ]; do {program}; i=$((i+1)); done"

        def per_exec(count: int, program: str, with_agent: bool, tag: str) -> float:
            client = tpm.client() if with_agent else None
            try:
                # One list (and vTPM) for every run with the agent; a first
                # run warms the cache where the program is always the same.
                use = agent if with_agent else None
                bundle.set_script(loop(1, program))
                run_timed(runc, bundle, use, client, "list")
                bundle.set_script(loop(0, program))
                empty = run_timed(runc, bundle, use, client, "list")
                bundle.set_script(loop(count, program))
                full = run_timed(runc, bundle, use, client, "list")
            finally:
                if client is not None:
                    client.close()
            return (full - empty) / count * 1e6

        return {
            "no_agent_us": per_exec(execs, "/opt/same/true", False, "plain"),
            "agent_cached_us": per_exec(execs, "/opt/same/true", True, "cached"),
            # The warm-up run measured /opt/n0 already; the loop hashes n1.. anew.
            "agent_new_file_us": per_exec(new, "/opt/n$((i+1))/true", True, "new"),
        }
    finally:
        agent.stop()
        tpm.stop()
        runc.cleanup()


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
    parser.add_argument("--execs", type=int, default=300)
    parser.add_argument("--new", type=int, default=60)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cvtpm-bench-") as tmp:
        latency = exec_latency(Path(tmp), args.execs, args.new)
        rates = hash_rate(Path(tmp))
    results = {"exec_latency": latency, "hash_rate": rates, "execs": args.execs}

    base = latency["no_agent_us"]
    print(f"{'exec latency':<34}{'us/exec':>10}{'x no agent':>12}")
    for key, value in latency.items():
        print(f"{key:<34}{value:>10.0f}{value / base:>12.2f}")
    print(f"\n{'hashing (page cache)':<34}{'GB/s':>10}{'x sha256sum':>12}")
    for label in ("large", "busybox_copies"):
        ours, theirs = rates[f"{label}_cvtpm_gbps"], rates[f"{label}_sha256sum_gbps"]
        print(f"{label + ' cvtpm':<34}{ours:>10.2f}{ours / theirs:>12.2f}")
        print(f"{label + ' sha256sum':<34}{theirs:>10.2f}{1:>12.2f}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
