"""`cvtpm-hook`: the OCI hook as its own small command, for runc and podman.

runc and podman start the hook at every container start and stop, so its
start-up time is added to every container's. This entry point imports only
the standard library and the hook's own modules (no CLI toolkit, no HTTP
library); `cvtpm hook` does the same work from the full CLI.

    cvtpm-hook [--state-dir DIR] [--run-dir DIR] createRuntime|create-runtime|poststop
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cvtpm.config import Paths
from cvtpm.errors import CvtpmError
from cvtpm.runtime.hook import run_stage
from cvtpm.runtime.oci import parse_state

# The OCI stage names, and the dashed spellings `cvtpm hook` also takes.
STAGE_NAMES = {
    "create-runtime": "createRuntime",
    "createRuntime": "createRuntime",
    "poststop": "poststop",
}

# The OCI state is a few kilobytes; anything far larger is not one.
MAX_STATE_SIZE = 1 << 20


def main(argv: list[str] | None = None) -> int:
    """Run one hook stage on the OCI state from stdin; 0 ok, 1 failed, 2 usage."""
    parser = argparse.ArgumentParser(
        prog="cvtpm-hook", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument(
        "--json", action="store_true", help="Print the outcome as JSON."
    )
    parser.add_argument("stage", choices=sorted(STAGE_NAMES))
    args = parser.parse_args(argv)

    defaults = Paths.from_env()
    paths = Paths(
        state=args.state_dir or defaults.state, run=args.run_dir or defaults.run
    )
    try:
        state = parse_state(sys.stdin.read(MAX_STATE_SIZE))
        outcome = run_stage(STAGE_NAMES[args.stage], state, paths)
    except CvtpmError as exc:
        print(f"cvtpm-hook: error: {exc.explain()}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
