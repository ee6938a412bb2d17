"""Benchmark: containers with a vTPM and measurement, against runc alone.

    python -m bench.churn [--seconds S] [--starts N] [--parallel P] [--pool N]

Every container is a busybox `true` run with `runc run`, exactly as a user's
would be: with cvtpm, a `cvtpm daemon` process runs beside the benchmark and
the bundle's createRuntime and poststop hooks call `cvtpm-hook`, so each
container gets a vTPM from the pool, a measurement list, fanotify marks and
its filtered TPM socket, and loses them at stop (ephemeral). The same rootfs,
mounts and namespaces without the hooks are the alternative.

Three figures. The start-to-exit time of one container at a time, N of
each, alternating so that machine noise hits both, in two conditions: back
to back, where the daemon's pool refills while the next containers start;
and at rest, where each start begins once the pool is full again and the
host has been quiet for REST seconds, runc alone the same. Then the sustained
churn of P loops running containers back to back for S seconds each way,
runc alone first. Results go to bench/results/churn.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench._util import host_tree, summary, write
from cvtpm.config import Paths
from cvtpm.runtime.bundle import RunSpec, oci_config, write_bundle
from cvtpm.runtime.daemon_client import DaemonClient
from cvtpm.runtime.rootfs import busybox_rootfs
from cvtpm.vtpm.manager import VtpmManager

CVTPM = Path(sys.executable).with_name("cvtpm")
# Quiet before each start "at rest": longer than the pool's own wait before
# it refills (cvtpm.vtpm.pool.QUIET_AFTER_TAKE), so the refill is over.
REST = 0.1


class Daemon:
    """`cvtpm daemon` on the benchmark's own state and run directories."""

    def __init__(self, paths: Paths, pool: int):
        self.paths = paths
        self.log = open(paths.state.parent / "daemon.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(CVTPM), "--state-dir", str(paths.state),
                "--run-dir", str(paths.run), "daemon", "--pool", str(pool),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        socket = paths.run / "daemon.sock"
        deadline = time.monotonic() + 120
        while not socket.is_socket():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cvtpm daemon did not start; see {self.log.name}")
            time.sleep(0.05)

    def wait_for_pool(self, size: int, timeout: float = 300, poll: float = 0.2) -> None:
        """Wait until the daemon's pool holds `size` ready vTPMs."""
        deadline = time.monotonic() + timeout
        while _pooled(self.paths) < size:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon's pool did not fill")
            time.sleep(poll)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)
        self.log.close()


def _pooled(paths: Paths) -> int:
    with DaemonClient.for_paths(paths) as client:
        return client.health()["pool"]["ready"]


class Bundles:
    """One bundle directory per container id; with or without cvtpm's hooks."""

    def __init__(self, run: Path, rootfs: Path, paths: Paths):
        self.run_dir = run
        self.rootfs = rootfs
        self.paths = paths
        self.runc_root = run / "runc"

    def run(self, cid: str, cvtpm: bool) -> float:
        """Seconds of `runc run` of one container, from start to its removal."""
        spec = RunSpec(self.rootfs, ["true"], cid, ephemeral=True)
        config = oci_config(spec, self.paths)
        if not cvtpm:
            del config["hooks"]
            config["annotations"] = {}
        bundle = write_bundle(self.run_dir / "bundles" / cid, config)
        command = ["runc", "--root", str(self.runc_root), "run", "--bundle"]
        start = time.perf_counter()
        done = subprocess.run(
            [*command, str(bundle), cid],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
        shutil.rmtree(bundle)
        if done.returncode != 0:
            raise RuntimeError(f"runc run {cid} failed: {done.stderr.decode()[-500:]}")
        return elapsed


def starts(
    bundles: Bundles, count: int, at_rest: Callable[[], None] | None = None
) -> tuple[list[float], list[float]]:
    """`count` single containers each way, alternating; with `at_rest`, each
    begins once it returns."""
    alone, ours = [], []
    for i in range(count):
        for samples, cvtpm in ((alone, False), (ours, True)):
            if at_rest is not None:
                at_rest()
            samples.append(bundles.run(f"{'c' if cvtpm else 'a'}{i}", cvtpm))
    return alone, ours


def churn(bundles: Bundles, seconds: float, parallel: int, cvtpm: bool) -> float:
    """Containers per second from `parallel` loops running back to back."""
    counts = [0] * parallel
    deadline = time.monotonic() + seconds
    errors: list[BaseException] = []

    def loop(worker: int) -> None:
        try:
            while time.monotonic() < deadline:
                bundles.run(f"{'c' if cvtpm else 'a'}{worker}-{counts[worker]}", cvtpm)
                counts[worker] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(w,)) for w in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(counts) / (time.monotonic() - started)


def measure(args, paths: Paths):
    """The single starts back to back and at rest, then the churn each way."""
    run = paths.run.parent  # the tmpfs: runc's state and the bundles too
    daemon = None
    try:
        rootfs = busybox_rootfs(paths.state.parent / "rootfs")
        daemon = Daemon(paths, args.pool)
        daemon.wait_for_pool(args.pool)
        bundles = Bundles(run, rootfs, paths)
        bundles.run("warm-a", cvtpm=False)
        bundles.run("warm-c", cvtpm=True)

        alone, ours = starts(bundles, args.starts)

        def at_rest() -> None:
            daemon.wait_for_pool(args.pool, poll=0.01)
            time.sleep(REST)

        rested = starts(bundles, args.starts, at_rest)
        daemon.wait_for_pool(args.pool)
        per_second = {
            "runc": churn(bundles, args.seconds, args.parallel, cvtpm=False),
            "cvtpm": churn(bundles, args.seconds, args.parallel, cvtpm=True),
        }
        return alone, ours, rested, per_second
    finally:
        if daemon is not None:
            try:
                daemon.stop()
            finally:
                # A container whose exit the daemon had not handled yet
                # keeps its vTPM running for the next daemon; none comes.
                VtpmManager(paths).delete_all()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--pool", type=int, default=16)
    args = parser.parse_args(argv)

    # A host's layout: what lives only while the host runs (runc's state,
    # the bundles, cvtpm's run directory) on a tmpfs, as /run is on Debian;
    # vTPM states, lists and the rootfs on disk.
    with host_tree("cvc") as paths:
        alone, ours, rested, per_second = measure(args, paths)

    result = {
        "seconds_each": args.seconds,
        "parallel": args.parallel,
        "runc_alone_ms": summary(alone),
        "cvtpm_ms": summary(ours),
        "start_ratio_median": summary(ours)["median"] / summary(alone)["median"],
        "rested_runc_alone_ms": summary(rested[0]),
        "rested_cvtpm_ms": summary(rested[1]),
        "rested_start_ratio_median": (
            summary(rested[1])["median"] / summary(rested[0])["median"]
        ),
        "containers_per_second": per_second,
        "containers_per_hour": {k: v * 3600 for k, v in per_second.items()},
    }
    path = write("churn", result)

    for condition, prefix in (("back to back", ""), ("at rest", "rested_")):
        print(
            f"One container at a time, {condition}, {args.starts} each "
            "(ms: min / median / p99)"
        )
        for label, key in (
            ("runc alone", "runc_alone_ms"),
            ("runc + cvtpm", "cvtpm_ms"),
        ):
            s = result[prefix + key]
            print(f"  {label:<14} {s['min']:7.1f} {s['median']:7.1f} {s['p99']:7.1f}")
        ratio = result[prefix + "start_ratio_median"]
        print(f"  ratio (median): {ratio:.2f}x runc alone")
    hourly = result["containers_per_hour"]
    print(
        f"Sustained, {args.parallel} loops for {args.seconds:.0f} s each:"
        f" {hourly['cvtpm']:,.0f} containers per hour with cvtpm"
        f" (runc alone: {hourly['runc']:,.0f})"
    )
    print(f"  written to {path}")
    return result


if __name__ == "__main__":
    main()
