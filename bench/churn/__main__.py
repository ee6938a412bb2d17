"""Benchmark: container churn with a vTPM and measurement, against runc alone.

    python -m bench.churn [--seconds S] [--pool N]

Each cycle is one busybox container running `true`: `runc create`, then (with
cvtpm) the daemon's work for a new container (a vTPM from the pool, the
measurement list, fanotify marks, the filtered TPM socket), `runc start`, wait,
then the poststop work (ephemeral: the vTPM and list are deleted) and
`runc delete`. The daemon's work runs in this process, as the daemon would
run it; the OCI hook processes that carry it under plain runc or podman are
timed apart (`hook_process_ms`), since they are a fixed cost per stage.
Cycles run back to back for S seconds each way, runc alone first.
Results go to bench/results/churn.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.runc import Bundle, Runc

from bench._util import summary, write
from cvtpm.config import Paths
from cvtpm.server.host import ContainerRequest, Host


def cycle(runc: Runc, bundle: Bundle, host: Host | None, name: str) -> float:
    """Seconds for one container's whole life."""
    start = time.perf_counter()
    cid, pid = runc.create(bundle)
    if host is not None:
        host.add_container(
            ContainerRequest(
                name=name, pid=pid, rootfs=str(bundle.rootfs), ephemeral=True
            )
        )
    runc.start(cid)
    runc.wait(cid)
    if host is not None:
        host.remove_container(name)
    subprocess.run(["runc", "--root", str(runc.root), "delete", cid], check=True)
    runc.ids.remove(cid)
    return time.perf_counter() - start


def sustained(runc, bundle, host, seconds: float, prefix: str) -> list[float]:
    """Cycle for `seconds`; the duration of each cycle."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(cycle(runc, bundle, host, f"{prefix}{len(samples)}"))
    return samples


def hook_process_seconds(count: int = 10) -> list[float]:
    """Seconds to start and finish one `cvtpm-hook` process (its fixed cost).

    It is given a container without cvtpm's annotation, so it reads the state
    and exits: the start-up cost every container pays per stage.
    """
    hook = str(Path(sys.executable).with_name("cvtpm-hook"))
    state = '{"ociVersion": "1.0.2", "id": "x", "status": "creating", "pid": 1, '
    state += '"bundle": "/nonexistent", "annotations": {}}'
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        subprocess.run([hook, "poststop"], input=state.encode(), capture_output=True)
        samples.append(time.perf_counter() - start)
    return samples


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--pool", type=int, default=16)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="cvc", dir="/tmp"))
    runc = Runc(work / "runc-root")
    host = None
    try:
        bundle = Bundle(work / "bundle")
        bundle.set_script("true")
        paths = Paths(state=work / "s", run=work / "r").ensure()
        host = Host(paths, host_pcrs=None, pool_size=args.pool)
        host.pool.fill()
        host.start()

        cycle(runc, bundle, None, "warm")
        cycle(runc, bundle, host, "warm")
        alone = sustained(runc, bundle, None, args.seconds, "a")
        ours = sustained(runc, bundle, host, args.seconds, "c")
        hooks = hook_process_seconds()
    finally:
        runc.cleanup()
        if host is not None:
            host.stop()
            host.pool.drain()
            for info in host.manager.list():
                host.manager.delete(info.name)
        shutil.rmtree(work, ignore_errors=True)

    per_second = {"runc": len(alone) / sum(alone), "cvtpm": len(ours) / sum(ours)}
    result = {
        "seconds_each": args.seconds,
        "runc_alone_ms": summary(alone),
        "cvtpm_ms": summary(ours),
        "containers_per_second": per_second,
        "containers_per_hour": {k: v * 3600 for k, v in per_second.items()},
        "start_ratio_median": summary(ours)["median"] / summary(alone)["median"],
        "hook_process_ms": summary(hooks),
    }
    path = write("churn", result)

    print(
        f"Container churn, {args.seconds:.0f} s each "
        "(ms per container: min / median / p99)"
    )
    for label, key in (("runc alone", "runc_alone_ms"), ("runc + cvtpm", "cvtpm_ms")):
        s = result[key]
        print(f"  {label:<14} {s['min']:7.1f} {s['median']:7.1f} {s['p99']:7.1f}")
    print(
        "  containers per hour with cvtpm: "
        f"{result['containers_per_hour']['cvtpm']:,.0f}"
        f" (runc alone: {result['containers_per_hour']['runc']:,.0f})"
    )
    print(
        f"  ratio (median): {result['start_ratio_median']:.2f}x runc alone;"
        f" plus {result['hook_process_ms']['median']:.0f} ms per hook process"
    )
    print(f"  written to {path}")
    return result


if __name__ == "__main__":
    main()
