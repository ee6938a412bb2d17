"""Benchmark: creating a certified vTPM, cvtpm against swtpm_setup, in one run.

    python -m bench.vtpm [--count N] [--cli-count N]

Each cvtpm sample is a vTPM ready for a container: swtpm running on encrypted
state, an ECC EK with a CA-signed certificate in NV, and an AK made in the
same vTPM and certified. Each swtpm_setup sample is
`swtpm_setup --tpm2 --create-ek-cert` into a fresh directory (Debian's
swtpm-localca signs the certificate), which leaves the vTPM stopped and has
no AK. Samples alternate between the two so that machine noise hits both;
each cvtpm sample then starts on a machine that was busy elsewhere for 0.6
s. A second series makes cvtpm's vTPMs one after another, as the pool does
when it refills.
vTPM states lie on disk, as swtpm_setup's do; cvtpm's run directory (sockets,
swtpm's logs, vTPMs being made) on a tmpfs, as /run is on a host. Results go to
bench/results/vtpm.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench._util import host_tree, summary, write
from cvtpm.config import Paths
from cvtpm.vtpm.manager import VtpmManager
from cvtpm.vtpm.pool import VtpmPool

# The cvtpm of the interpreter running the benchmark (the project's venv).
CVTPM = str(Path(sys.executable).with_name("cvtpm"))


def swtpm_setup_once(directory: Path) -> float:
    """Seconds for one `swtpm_setup --tpm2 --create-ek-cert` into `directory`."""
    directory.mkdir()
    start = time.perf_counter()
    subprocess.run(
        ["swtpm_setup", "--tpm2", "--create-ek-cert", "--tpmstate", str(directory)],
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - start
    shutil.rmtree(directory)
    return elapsed


def cvtpm_once(manager: VtpmManager, name: str) -> float:
    """Seconds for one VtpmManager.create (the daemon's path); deletion untimed."""
    start = time.perf_counter()
    manager.create(name)
    elapsed = time.perf_counter() - start
    manager.delete(name)
    return elapsed


def pool_takes(manager: VtpmManager, count: int) -> list[float]:
    """Seconds for each of `count` takes from a full pool (what a container waits)."""
    pool = VtpmPool(manager, count)
    pool.fill()
    samples = []
    for i in range(count):
        start = time.perf_counter()
        info = pool.take(f"p{i}")
        samples.append(time.perf_counter() - start)
        assert info.state == "running"
    for i in range(count):
        manager.delete(f"p{i}")
    return samples


def cli_once(paths: Paths, name: str) -> float:
    """Seconds for one `cvtpm vtpm create` process, Python start-up included."""
    common = [CVTPM, "--state-dir", str(paths.state), "--run-dir", str(paths.run)]
    start = time.perf_counter()
    subprocess.run([*common, "vtpm", "create", name], check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    subprocess.run([*common, "vtpm", "delete", name], check=True, capture_output=True)
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--cli-count", type=int, default=10)
    args = parser.parse_args(argv)

    # A host's layout: vTPM states on disk beside swtpm_setup's, the run
    # directory (sockets, swtpm's logs, vTPMs being made) on a tmpfs, as /run
    # is on Debian.
    with host_tree("cvb") as paths:
        work = paths.state.parent
        manager = VtpmManager(paths)
        _ = manager.ca  # the CA is made once per host, not per vTPM
        cvtpm_once(manager, "warm-up")

        ours, theirs = [], []
        for i in range(args.count):
            ours.append(cvtpm_once(manager, f"b{i}"))
            theirs.append(swtpm_setup_once(work / f"setup{i}"))
        back_to_back = [cvtpm_once(manager, f"n{i}") for i in range(args.count)]
        cli = [cli_once(paths, f"c{i}") for i in range(args.cli_count)]
        pooled = pool_takes(manager, min(args.count, 50))

    result = {
        "cvtpm_create_ms": summary(ours),
        "cvtpm_create_back_to_back_ms": summary(back_to_back),
        "swtpm_setup_ms": summary(theirs),
        "cvtpm_cli_create_ms": summary(cli),
        "cvtpm_pool_take_ms": summary(pooled),
    }
    result["speedup_pool_median"] = (
        result["swtpm_setup_ms"]["median"] / result["cvtpm_pool_take_ms"]["median"]
    )
    result["speedup_median"] = (
        result["swtpm_setup_ms"]["median"] / result["cvtpm_create_ms"]["median"]
    )
    result["speedup_back_to_back_median"] = (
        result["swtpm_setup_ms"]["median"]
        / result["cvtpm_create_back_to_back_ms"]["median"]
    )
    result["speedup_cli_median"] = (
        result["swtpm_setup_ms"]["median"] / result["cvtpm_cli_create_ms"]["median"]
    )
    path = write("vtpm", result)

    print(f"vTPM creation, {args.count} each (ms: min / median / p99)")
    for label, key in (
        ("cvtpm (in daemon)", "cvtpm_create_ms"),
        ("cvtpm, back to back", "cvtpm_create_back_to_back_ms"),
        ("cvtpm vtpm create (CLI)", "cvtpm_cli_create_ms"),
        ("cvtpm, taken from the pool", "cvtpm_pool_take_ms"),
        ("swtpm_setup --create-ek-cert", "swtpm_setup_ms"),
    ):
        s = result[key]
        print(f"  {label:<30} {s['min']:7.1f} {s['median']:7.1f} {s['p99']:7.1f}")
    print(
        f"  speed-up (median): {result['speedup_median']:.1f}x in daemon, "
        f"{result['speedup_back_to_back_median']:.1f}x back to back, "
        f"{result['speedup_cli_median']:.1f}x from the CLI"
    )
    print(f"  written to {path}")
    return result


if __name__ == "__main__":
    main()
