"""Which of a container's mounts the agent marks, from its mountinfo."""

from __future__ import annotations

import json
import sys
import time

import pytest

from cvtpm.errors import ParseError
from cvtpm.measure import mounts

# The shape of /proc/PID/mountinfo (proc(5)): optional fields before "-",
# and a mount point with a space written as \040.
MOUNTINFO = (
    b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    b"30 22 0:5 / /proc rw,nosuid - proc proc rw\n"
    b"31 22 0:6 / /dev rw,nosuid shared:2 master:3 - tmpfs tmpfs rw,mode=755\n"
    b"32 31 0:7 / /dev/pts rw - devpts devpts rw\n"
    b"40 22 8:1 /srv/data /my\\040volume ro - ext4 /dev/vda rw\n"
    b"41 22 0:8 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
)


def test_a_line_that_is_no_mount_is_an_error():
    """A line without its "-" separator and type is refused, not skipped: a
    mount that cannot be read cannot be marked."""
    bad = MOUNTINFO.replace(b"30 22 0:5 / /proc rw,nosuid - proc", b"30 22 0:5 / /proc")
    with pytest.raises(ParseError, match="mountinfo line 2 is not a mount"):
        mounts.parse_mountinfo(bad)


def test_mountinfo_points_and_types():
    """Each line gives its mount point (escapes undone) and filesystem type."""
    assert mounts.parse_mountinfo(MOUNTINFO) == [
        ("/", "ext4"),
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/my volume", "ext4"),
        ("/sys/fs/cgroup", "cgroup2"),
    ]


# A createRuntime hook that writes what container_mounts sees, before
# pivot_root, for the rootfs spelled as given and spelled otherwise.
HOOK = """
import json, sys
from cvtpm.errors import ParseError
from cvtpm.measure import mounts
state = json.load(sys.stdin)
rootfs = sys.argv[2]
spelled = rootfs + "/../" + rootfs.rsplit("/", 1)[1] + "//"
seen = [mounts.container_mounts(state["pid"], r) for r in (rootfs, spelled)]
open(sys.argv[1], "w").write(json.dumps(seen))
"""


@pytest.mark.root
@pytest.mark.runc
def test_a_runc_container_before_and_after_pivot_root(runc, bundle_factory, tmp_path):
    """Before pivot_root (a createRuntime hook) the mounts lie under the rootfs's
    host path, however that path is spelled; after it, under the namespace's
    root, even if the container makes a directory of its rootfs's host path."""
    bundle = bundle_factory()
    rootfs = str(bundle.rootfs)
    seen_file = tmp_path / "seen.json"
    bundle.set_script(f"mkdir -p {rootfs}/dev; touch /ready; sleep 30")
    bundle._config["hooks"] = {
        "createRuntime": [
            {"path": sys.executable,
             "args": [sys.executable, "-c", HOOK, str(seen_file), rootfs]}
        ]
    }  # fmt: skip
    bundle.set_script(f"mkdir -p {rootfs}/dev; touch /ready; sleep 30")
    cid, pid = runc.create(bundle)
    root = f"/proc/{pid}/root"

    # 1. In the hook: the host's root, the rootfs's mounts below it.
    before, spelled = json.loads(seen_file.read_text())
    assert spelled == before
    assert before[0] == root + rootfs
    assert f"{root}{rootfs}/dev" in before  # runc's /dev, a tmpfs
    assert not any(p.endswith(("/proc", "/sys", "/dev/pts")) for p in before)

    # 2. Pivoted (as a daemon adopting it finds it), and the container's own
    # copy of its host path must not make it look as if it were not.
    runc.start(cid)
    deadline = time.monotonic() + 20
    while not (bundle.rootfs / "ready").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    after = mounts.container_mounts(pid, rootfs)
    assert after[0] == root and f"{root}/dev" in after
    # runc masks /proc/acpi and the like after pivot_root, with more mounts.
    assert {p.replace(root + rootfs, root) for p in before} <= set(after)
