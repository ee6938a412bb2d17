"""Small root filesystems, and host tools lent to them read-only.

A busybox rootfs is what the demo, the tests and the benchmarks run; tpm2-tools
lent from the host let a user inside such a container read its vTPM.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cvtpm.errors import ConfigError

BUSYBOX = Path("/bin/busybox")
TPM2 = Path("/usr/bin/tpm2")
# libtss2's TCTI loader dlopens the TCTI by name, so ldd does not list it.
TCTI_SWTPM = Path("/usr/lib/x86_64-linux-gnu/libtss2-tcti-swtpm.so.0")
TCTI_DEVICE = Path("/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0")


def busybox_rootfs(directory: Path) -> Path:
    """A rootfs at `directory` holding busybox-static and a symlink per applet."""
    if not BUSYBOX.exists():
        raise ConfigError(
            "busybox-static is not installed (apt-get install busybox-static)"
        )
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, bin_dir / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = bin_dir / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
    for sub in ("proc", "dev", "sys", "tmp", "run", "etc", "usr/bin"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    return directory


def tpm2_tools_binds() -> list[tuple[Path, Path]]:
    """(host file, path inside) for `/usr/bin/tpm2` and every library it loads.

    Inside, the tools run as `tpm2 pcrread ...` (tpm2-tools' multi-call binary).
    """
    if not TPM2.exists():
        raise ConfigError("tpm2-tools is not installed (apt-get install tpm2-tools)")
    wanted = [TPM2, *(t for t in (TCTI_SWTPM, TCTI_DEVICE) if t.exists())]
    for binary in list(wanted):
        ldd = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, check=True
        ).stdout
        for line in ldd.splitlines():
            path = next((w for w in line.split() if w.startswith("/")), None)
            if path is not None:
                wanted.append(Path(path))
    return [(path.resolve(), path) for path in dict.fromkeys(wanted)]
