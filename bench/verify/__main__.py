"""Benchmark of the verifier: list entries per second, incremental cost, memory.

    python -m bench.verify [--entries N] [--repeats R]

- throughput: one full verification (registration, quote, replay of PCR 10 in
  the sha1 bank, runtime policy) of an N-entry list, as entries per second:
  cvtpm on the binary list and on the ascii list, Keylime's
  `ima.process_measurement_list` on the ascii list (Keylime reads no binary
  lists) with the same policy, and `evmctl ima_measurement` (replay only,
  no policy) on the binary list;
- incremental: one attestation on top of a verified N-entry list with 0, 10
  and 1000 new entries (all steps, signature included);
- memory: the verifier's state per container, as stored and in Python.

Keylime runs from its own virtual environment, bench/.keylime-venv, made on
first use from PyPI. Results go to bench/results/verify.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench._util import write
from bench.verify._world import (
    World,
    keylime_policy,
    make_entries,
    make_list,
    write_json,
)
from cvtpm.attest._fastlist import split_ascii
from cvtpm.attest.service import load_runtime_policy
from cvtpm.attest.verifier import (
    ReplayState,
    check_policy,
    check_templates,
    replay_raw,
    verify,
)
from cvtpm.ima.ascii import dump_ascii
from cvtpm.ima.binary import dump_binary
from cvtpm.ima.replay import replay

HERE = Path(__file__).resolve().parent
KEYLIME_VENV = HERE.parent / ".keylime-venv"
# keylime's wheel declares no dependencies; these are what its IMA code imports.
KEYLIME_PACKAGES = [
    "keylime",
    "jsonschema",
    "pyyaml",
    "lark",
    "cryptography",
    "pyasn1",
    "pyasn1-modules",
    "packaging",
    "requests",
]


def best(run, repeats: int) -> float:
    """The fastest of `repeats` runs, in seconds (the least disturbed one)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def ours_binary(world: World, entries, policy_text: str, repeats: int) -> float:
    """Seconds for cvtpm's full verify() of the binary list from index 0."""
    pcr = {"sha1": replay(entries, "sha1")}
    data = dump_binary(entries)
    policy = load_runtime_policy(policy_text)

    def run():
        evidence = world.evidence(os.urandom(20), pcr, data, 0)
        result, _ = verify(
            world.registration,
            ReplayState(),
            evidence,
            evidence.nonce,
            trust_store=world.trust,
            policy=policy,
        )
        assert result.trusted, result.failures

    return best(run, repeats)


def ours_ascii(entries, policy_text: str, repeats: int) -> float:
    """Seconds for cvtpm on the ascii list: read, replay sha1, templates, policy.

    The quote and registration checks are left out here (they cost the same as
    for a binary list and are timed there).
    """
    quoted = {"sha1": replay(entries, "sha1")}
    text = dump_ascii(entries)
    policy = load_runtime_policy(policy_text)

    def run():
        raws = split_ascii(text)
        replayed, failures = replay_raw(ReplayState(), raws, quoted)
        count = replayed.boundary
        failures += check_templates(replayed, count, 0, policy)
        failures += check_policy(policy, replayed, count, 0)
        assert count == len(raws) and not failures, failures

    return best(run, repeats)


def ensure_keylime() -> Path:
    """The Python of bench/.keylime-venv, created and filled from PyPI if missing."""
    python = KEYLIME_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(KEYLIME_VENV)], check=True)
        (KEYLIME_VENV / ".gitignore").write_text("*\n")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *KEYLIME_PACKAGES], check=True
        )
    return python


def keylime(work: Path, entries, policy: dict, repeats: int) -> float:
    """Seconds for Keylime's process_measurement_list on the same ascii list."""
    listing = work / "ascii_runtime_measurements"
    listing.write_text(dump_ascii(entries))
    policy_file = write_json(work / "keylime-policy.json", policy)
    pcr = replay(entries, "sha1").hex()
    out = subprocess.run(
        [
            str(ensure_keylime()),
            str(HERE / "_keylime_runner.py"),
            str(listing),
            str(policy_file),
            pcr,
            str(repeats),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=work,
    )
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["trusted"], "Keylime did not accept the list"
    return min(report["seconds"])


def evmctl(work: Path, entries, repeats: int) -> float:
    """Seconds for `evmctl ima_measurement` to replay the binary list (no policy)."""
    listing = work / "binary_runtime_measurements"
    listing.write_bytes(dump_binary(entries))
    pcr = replay(entries, "sha1")
    pcrs = work / "pcrs-sha1"
    pcrs.write_text(
        "".join(
            f"PCR-{i:02d}: {(pcr if i == 10 else bytes(20)).hex()}\n" for i in range(24)
        )
    )
    args = ["evmctl", "ima_measurement", "--pcrs", f"sha1,{pcrs}", str(listing)]

    def run():
        subprocess.run(args, check=True, capture_output=True)

    return best(run, repeats)


def incremental(world: World, base: int, policy_text: str, repeats: int) -> dict:
    """Milliseconds per attestation after `base` verified entries, by new entries."""
    entries = make_list(base)
    start_state = ReplayState(base, {"sha1": replay(entries, "sha1")}, 1, 0)
    policy = load_runtime_policy(policy_text)
    costs = {}
    for new in (0, 10, 1000):
        added = make_entries(new, start=base)
        pcr = {"sha1": replay(added, "sha1", start_state.values["sha1"])}
        data = dump_binary(added)
        samples = []
        warm_up = world.evidence(os.urandom(20), pcr, data, base)
        verify(
            world.registration,
            start_state,
            warm_up,
            warm_up.nonce,
            trust_store=world.trust,
            policy=policy,
        )
        for _ in range(max(repeats, 20) if new < 1000 else repeats):
            evidence = world.evidence(os.urandom(20), pcr, data, base)
            t0 = time.perf_counter()
            result, state = verify(
                world.registration,
                start_state,
                evidence,
                evidence.nonce,
                trust_store=world.trust,
                policy=policy,
            )
            samples.append(time.perf_counter() - t0)
            assert result.trusted and result.new_entries == new
        costs[str(new)] = {
            "median_ms": statistics.median(samples) * 1000,
            "min_ms": min(samples) * 1000,
        }
    return costs


def memory(world: World, entries) -> dict:
    """Bytes the verifier keeps per container: stored state and live objects."""
    state = ReplayState(
        len(entries),
        {b: replay(entries, b) for b in ("sha1", "sha256", "sha384", "sha512")},
        1,
        0,
    )
    stored = len(json.dumps(state.to_dict()))
    registration = sum(
        len(x)
        for x in (
            world.registration.ek_cert_pem,
            world.registration.ak_cert_pem,
            world.registration.ak_public,
        )
    )
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    states = [ReplayState.from_dict(state.to_dict()) for _ in range(1000)]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    live = sum(s.size_diff for s in after.compare_to(before, "filename")) / len(states)
    return {
        "state_json_bytes": stored,
        "state_python_bytes": round(live),
        "registration_bytes": registration,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.verify")
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    n = args.entries
    entries = make_list(n)
    # The policy also allows the files the incremental runs append.
    policy = keylime_policy(entries + make_entries(1000, start=n))
    policy_text = json.dumps(policy)
    with tempfile.TemporaryDirectory(prefix="cvtbench") as tmp:
        work = Path(tmp)
        world = World(work)
        seconds = {
            "cvtpm_binary": ours_binary(world, entries, policy_text, args.repeats),
            "cvtpm_ascii": ours_ascii(entries, policy_text, args.repeats),
            "keylime_ascii": keylime(work, entries, policy, args.repeats),
            "evmctl_binary": evmctl(work, entries, args.repeats),
        }
        rates = {k: n / v for k, v in seconds.items()}
        ratios = {
            "cvtpm_ascii_vs_keylime": rates["cvtpm_ascii"] / rates["keylime_ascii"],
            "cvtpm_binary_vs_keylime": rates["cvtpm_binary"] / rates["keylime_ascii"],
            "cvtpm_binary_vs_evmctl": rates["cvtpm_binary"] / rates["evmctl_binary"],
        }
        costs = incremental(world, n, policy_text, args.repeats)
        mem = memory(world, entries)

    path = write(
        "verify",
        {
            "entries": n,
            "entries_per_second": {k: round(v) for k, v in rates.items()},
            "ratios": {k: round(v, 2) for k, v in ratios.items()},
            "incremental_attestation": costs,
            "memory_per_container": mem,
            "load_average_at_end": os.getloadavg()[0],
            "notes": [
                "all verifiers replay the sha1 bank of PCR 10; cvtpm and Keylime also "
                "check template hashes and the same Keylime runtime policy",
                "Keylime reads only ascii lists, so the binary ratio compares cvtpm "
                "on the binary list with Keylime on the same list in ascii",
                "evmctl replays only (no policy) and its time includes process start",
            ],
        },
    )
    print(f"verification of a {n}-entry list (sha1 bank, runtime policy)")
    print(f"{'verifier':<16}{'entries/s':>14}")
    for name, rate in rates.items():
        print(f"{name:<16}{rate:>14,.0f}")
    for name, ratio in ratios.items():
        print(f"{name:<28}{ratio:>8.2f}x")
    print("incremental attestation (all steps):")
    for new, cost in costs.items():
        print(f"  {new:>5} new entries: {cost['median_ms']:8.3f} ms")
    print(f"memory per container: {mem}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
