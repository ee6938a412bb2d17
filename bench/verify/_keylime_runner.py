"""Time Keylime's IMA verification; run with bench/.keylime-venv's Python.

    python _keylime_runner.py LIST POLICY PCR10_SHA1_HEX REPEATS

Prints JSON: seconds per run, and whether the list verified.
"""

import json
import sys
import time
import types

# keylime.signing imports the GnuPG bindings (gpgme), which PyPI does not
# ship; IMA verification never calls them, so an empty module stands in.
sys.modules.setdefault("gpg", types.ModuleType("gpg"))

from keylime.common import algorithms  # noqa: E402
from keylime.ima import ima  # noqa: E402


def main() -> None:
    list_path, policy_path, pcr, repeats = sys.argv[1:5]
    with open(list_path) as f:
        lines = f.read().splitlines(keepends=True)
    with open(policy_path) as f:
        policy_text = f.read()
    times = []
    ok = False
    for _ in range(int(repeats)):
        policy = json.loads(policy_text)
        start = time.perf_counter()
        _, failure = ima.process_measurement_list(
            None, lines, policy, pcr, hash_alg=algorithms.Hash.SHA1
        )
        times.append(time.perf_counter() - start)
        ok = not failure.get_event_ids()
    print(json.dumps({"seconds": times, "trusted": ok, "entries": len(lines)}))


if __name__ == "__main__":
    main()
