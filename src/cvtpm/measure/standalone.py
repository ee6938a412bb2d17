"""Run the agent as a process of its own, from a JSON description of containers.

The daemon embeds `Agent` directly; this entry point serves tests and hosts
that supervise the agent separately.  Usage:

    python -m cvtpm.measure.standalone CONFIG.json

CONFIG holds {"policy": text or null, "fanotify_fd": inherited fd or null,
"containers": [{"name", "list_dir", "tcti", "pid" | "mnt_ns" and "mounts",
"parent"}]}.  The process prints "ready" once every container is measured,
and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from cvtpm.errors import CvtpmError
from cvtpm.ima.policy import DEFAULT_CONTAINER_POLICY, parse_policy
from cvtpm.measure.agent import Agent
from cvtpm.measure.container import ContainerSpec
from cvtpm.measure.hostpcrs import default_host_pcrs
from cvtpm.tpm.client import TpmClient


def main(argv: list[str] | None = None) -> int:
    """Measure the configured containers until signalled; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cvtpm.measure.standalone CONFIG.json", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    config = json.loads(Path(args[0]).read_text())

    policy = parse_policy(config.get("policy") or DEFAULT_CONTAINER_POLICY)
    agent = Agent(
        policy, fanotify_fd=config.get("fanotify_fd"), host_pcrs=default_host_pcrs()
    )
    try:
        for c in config["containers"]:
            agent.add_container(
                ContainerSpec(
                    name=c["name"],
                    list_dir=Path(c["list_dir"]),
                    extender=functools.partial(TpmClient, c["tcti"]),
                    pid=c.get("pid"),
                    mnt_ns=c.get("mnt_ns"),
                    mounts=c.get("mounts", ()),
                    parent=c.get("parent"),
                )
            )
    except CvtpmError as exc:
        print(f"cvtpm: error: {exc.explain()}", file=sys.stderr)
        agent.stop()
        return 1

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    print("ready", flush=True)
    done.wait()
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
