"""Run every benchmark, then print one table of the figures and their ratios.

    python -m bench [--quick]

Each benchmark writes bench/results/NAME.json; the table is also written to
bench/results/summary.md, which the README quotes. --quick shortens every run
(for a smoke test; the figures are then rougher).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench._util import RESULTS, machine

FULL = {
    "vtpm": ["--count", "100", "--cli-count", "10"],
    "churn": ["--seconds", "60"],
    "memory": ["--running", "100", "--provisioned", "1000", "--sample", "200"],
    "measure": [],
    "verify": [],
}
QUICK = {
    "vtpm": ["--count", "10", "--cli-count", "3"],
    "churn": ["--seconds", "10", "--starts", "10"],
    "memory": ["--running", "20", "--provisioned", "60", "--sample", "40"],
    "measure": ["--execs", "100", "--new", "20"],
    "verify": ["--entries", "5000", "--repeats", "1"],
}


def _load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def rows() -> list[tuple[str, str, str, str]]:
    """(figure, cvtpm, alternative, ratio) from the results files."""
    out = []
    v = _load("vtpm")
    if v:
        out.append((
            "certified vTPM ready, each after a `swtpm_setup` (median)",
            f"{v['cvtpm_create_ms']['median']:.1f} ms",
            f"swtpm_setup --create-ek-cert {v['swtpm_setup_ms']['median']:.0f} ms",
            f"{v['speedup_median']:.1f}x faster",
        ))  # fmt: skip
        if "cvtpm_create_back_to_back_ms" in v:
            out.append((
                "certified vTPM ready, back to back (median)",
                f"{v['cvtpm_create_back_to_back_ms']['median']:.1f} ms",
                f"swtpm_setup --create-ek-cert {v['swtpm_setup_ms']['median']:.0f} ms",
                f"{v['speedup_back_to_back_median']:.1f}x faster",
            ))  # fmt: skip
        if "cvtpm_pool_take_ms" in v:
            out.append((
                "certified vTPM taken from the pool (median)",
                f"{v['cvtpm_pool_take_ms']['median']:.2f} ms",
                f"swtpm_setup --create-ek-cert {v['swtpm_setup_ms']['median']:.0f} ms",
                f"{v['speedup_pool_median']:.0f}x faster",
            ))  # fmt: skip
    c = _load("churn")
    if c:
        hourly = c["containers_per_hour"]
        out.append((
            "`runc run` of busybox `true`, one at a time, back to back (median)",
            f"{c['cvtpm_ms']['median']:.0f} ms",
            f"runc alone {c['runc_alone_ms']['median']:.0f} ms",
            f"{c['start_ratio_median']:.2f}x",
        ))  # fmt: skip
        if "rested_cvtpm_ms" in c:
            out.append((
                "`runc run` of busybox `true`, one at a time, at rest (median)",
                f"{c['rested_cvtpm_ms']['median']:.0f} ms",
                f"runc alone {c['rested_runc_alone_ms']['median']:.0f} ms",
                f"{c['rested_start_ratio_median']:.2f}x",
            ))  # fmt: skip
        out.append((
            f"containers with a vTPM per hour, {c['parallel']} loops",
            f"{hourly['cvtpm']:,.0f}",
            f"runc alone {hourly['runc']:,.0f}",
            f"{hourly['cvtpm'] / hourly['runc']:.2f}x",
        ))  # fmt: skip
    m = _load("memory")
    if m:
        mib = 1024 * 1024
        out.append((
            "PSS per running vTPM",
            f"{m['pss_per_vtpm_bytes'] / mib:.2f} MiB",
            f"bare swtpm {m['pss_per_bare_swtpm_bytes'] / mib:.2f} MiB",
            f"{m['ratio_vs_bare_swtpm']:.2f}x",
        ))  # fmt: skip
        together = m.get(f"pss_{m.get('sample')}_vtpms_bytes")
        if together is not None:
            out.append((
                f"{m['sample']} vTPMs running at once (total PSS)",
                f"{together / mib:.0f} MiB",
                f"{m['sample']} bare swtpm "
                f"{m['sample'] * m['pss_per_bare_swtpm_bytes'] / mib:.0f} MiB",
                f"{m['ratio_vs_bare_swtpm']:.2f}x",
            ))  # fmt: skip
        out.append((
            f"{m['provisioned']} provisioned, {m['running']} running "
            "(the rest released when idle)",
            f"{m['total_pss_bytes'] / mib:.0f} MiB", "-", "-",
        ))  # fmt: skip
        if "first_command_after_release_ms" in m:
            out.append((
                "first TPM command to a released vTPM (median)",
                f"{m['first_command_after_release_ms']:.1f} ms",
                f"running vTPM {m['same_command_running_ms']:.2f} ms",
                f"{m['ratio_wake_vs_running']:.1f}x",
            ))  # fmt: skip
    e = _load("measure")
    if e:
        lat, rate = e["exec_latency"], e["hash_rate"]
        base = lat["no_agent"]
        if "allow_all_responder" in lat:
            floor = lat["allow_all_responder"]
            out.append((
                "exec in a container, allow-all fanotify responder in C, the"
                " floor (median / p99)",
                f"{floor['added_median_us']:+.0f} / {floor['added_p99_us']:+.0f} us",
                f"no agent {base['median_us']:.0f} / {base['p99_us']:.0f} us",
                f"{floor['median_us'] / base['median_us']:.2f}x",
            ))  # fmt: skip
        for key, label in (
            ("agent_cached", "cached file"),
            ("agent_cached_busy_poll", "cached file, --busy-poll 2000"),
            ("agent_new_file", "new 2 MB file"),
        ):
            figures = lat[key]
            added = (figures["added_median_us"], figures["added_p99_us"])
            out.append((
                f"exec in a container, agent, {label} (median / p99)",
                f"{added[0]:+.0f} / {added[1]:+.0f} us",
                f"no agent {base['median_us']:.0f} / {base['p99_us']:.0f} us",
                f"{figures['median_us'] / base['median_us']:.2f}x",
            ))  # fmt: skip
        out.append((
            "hashing rate (sha256)",
            f"{rate['large_cvtpm_gbps']:.2f} GB/s",
            f"sha256sum {rate['large_sha256sum_gbps']:.2f} GB/s",
            f"{rate['large_cvtpm_gbps'] / rate['large_sha256sum_gbps']:.1f}x",
        ))  # fmt: skip
    f = _load("verify")
    if f:
        eps, ratio = f["entries_per_second"], f["ratios"]
        out.append((
            "verification, binary list",
            f"{eps['cvtpm_binary']:,} entries/s",
            f"Keylime {eps['keylime_ascii']:,}/s",
            f"{ratio['cvtpm_binary_vs_keylime']:.1f}x",
        ))  # fmt: skip
        out.append((
            "verification, ascii list",
            f"{eps['cvtpm_ascii']:,} entries/s",
            f"Keylime {eps['keylime_ascii']:,}/s",
            f"{ratio['cvtpm_ascii_vs_keylime']:.1f}x",
        ))  # fmt: skip
        out.append((
            "replay, binary list",
            f"{eps['cvtpm_binary']:,} entries/s",
            f"evmctl {eps['evmctl_binary']:,}/s",
            f"{ratio['cvtpm_binary_vs_evmctl']:.1f}x",
        ))  # fmt: skip
        inc = f["incremental_attestation"]
        out.append((
            "incremental attestation, 0 / 10 / 1000 new",
            " / ".join(f"{inc[k]['median_ms']:.1f}" for k in ("0", "10", "1000"))
            + " ms",
            "-", "-",
        ))  # fmt: skip
        mem = f["memory_per_container"]
        out.append((
            "verifier state per container",
            f"{mem['state_json_bytes']} B",
            "-", "-",
        ))  # fmt: skip
    return out


def table() -> str:
    """The Markdown table of every figure found in bench/results."""
    lines = [
        "| figure | cvtpm | alternative, same run | ratio |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows()),
    ]
    info = machine()
    lines.append("")
    lines.append(
        f"Measured on {info['cpus']} cores, Linux {info['kernel']}, "
        f"Python {info['python']}, {info['date']}."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="Run only these benchmarks.")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    failed = []
    for name, extra in plan.items():
        if args.only and name not in args.only:
            continue
        print(f"\n== bench.{name} ==", flush=True)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", f"bench.{name}", *extra])
        print(f"(bench.{name}: {time.monotonic() - started:.0f} s)", flush=True)
        if done.returncode != 0:
            failed.append(name)

    text = table()
    (RESULTS / "summary.md").write_text(text)
    print("\n" + text)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
