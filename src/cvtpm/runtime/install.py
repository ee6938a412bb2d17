"""The hook declarations that make runc and podman call `cvtpm hook`.

- podman (and CRI-O) read hook files from /etc/containers/oci/hooks.d, schema
  1.0.0 of containers/common's `oci-hooks(5)`: a hook, the stages it runs at, and a
  `when` condition; ours fire only for containers annotated io.cvtpm.vtpm=enabled.
- runc takes hooks from config.json's `hooks` object (OCI runtime spec, "POSIX-
  platform Hooks"); `runc_hooks` gives that fragment, which `cvtpm run` uses.
- A CDI spec (Container Device Interface 0.5.0) adds the TCTI environment to a
  podman container that asks for the device `cvtpm.io/vtpm=socket` (or `=device`).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from cvtpm.config import Paths
from cvtpm.errors import ConfigError
from cvtpm.runtime.expose import tcti_env
from cvtpm.runtime.oci import ANNOTATION_ENABLE

DEFAULT_HOOKS_DIR = Path("/etc/containers/oci/hooks.d")
DEFAULT_CDI_DIR = Path("/etc/cdi")
CDI_KIND = "cvtpm.io/vtpm"
HOOK_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Stage names as the OCI spec spells them, and as `cvtpm hook` takes them.
HOOK_STAGES = {"createRuntime": "create-runtime", "poststop": "poststop"}
# The stages installed: the daemon tears a container down when its process
# exits, so a poststop hook would only add a process to every container's stop.
INSTALLED_STAGES = ("createRuntime",)
# What older versions installed, removed by install().
_STALE_HOOK_FILES = ("cvtpm-poststop.json",)


def cvtpm_executable() -> Path:
    """The absolute path of the running `cvtpm` command, for hooks to call."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "cvtpm" and argv0.exists():
        return argv0.absolute()
    found = shutil.which("cvtpm")
    if found is None:
        raise ConfigError("cannot find the cvtpm executable; pass --executable")
    return Path(found).absolute()


def hook_executable(executable: Path) -> Path:
    """`cvtpm-hook`, installed next to `cvtpm`: the hook runtimes should call."""
    return executable.with_name("cvtpm-hook")


def hook_args(stage: str, paths: Paths) -> list[str]:
    """The argv of `cvtpm-hook` at an OCI stage, with the host's directories."""
    return [
        "cvtpm-hook",
        "--state-dir",
        str(paths.state),
        "--run-dir",
        str(paths.run),
        HOOK_STAGES[stage],
    ]


def runc_hooks(executable: Path, paths: Paths) -> dict[str, list[dict[str, Any]]]:
    """config.json's `hooks` object that runs `cvtpm-hook` for runc."""
    return {
        stage: [
            {
                "path": str(hook_executable(executable)),
                "args": hook_args(stage, paths),
                "env": [HOOK_PATH_ENV],
            }
        ]
        for stage in INSTALLED_STAGES
    }


def hooks_d_documents(executable: Path, paths: Paths) -> dict[str, dict[str, Any]]:
    """podman hooks.d files (schema 1.0.0), by file name, one per stage."""
    return {
        f"cvtpm-{HOOK_STAGES[stage]}.json": {
            "version": "1.0.0",
            "hook": {
                "path": str(hook_executable(executable)),
                "args": hook_args(stage, paths),
                "env": [HOOK_PATH_ENV],
            },
            "when": {"annotations": {f"^{_regex(ANNOTATION_ENABLE)}$": "^enabled$"}},
            "stages": [stage],
        }
        for stage in INSTALLED_STAGES
    }


def cdi_spec() -> dict[str, Any]:
    """A CDI spec whose devices `socket` and `device` add the TCTI environment."""
    return {
        "cdiVersion": "0.5.0",
        "kind": CDI_KIND,
        "devices": [
            {
                "name": expose,
                "containerEdits": {
                    "env": [f"{k}={v}" for k, v in tcti_env(expose).items()]
                },
            }
            for expose in ("socket", "device")
        ],
    }


def install(
    executable: Path,
    paths: Paths,
    hooks_dir: Path = DEFAULT_HOOKS_DIR,
    cdi_dir: Path | None = DEFAULT_CDI_DIR,
) -> list[Path]:
    """Write the hooks.d files (and the CDI spec); returns the files written."""
    if not executable.is_absolute():
        raise ConfigError(f"the hook executable must be an absolute path: {executable}")
    written = []
    hooks_dir.mkdir(parents=True, exist_ok=True)
    for name, document in hooks_d_documents(executable, paths).items():
        written.append(_write_json(hooks_dir / name, document))
    for stale in _STALE_HOOK_FILES:
        (hooks_dir / stale).unlink(missing_ok=True)
    if cdi_dir is not None:
        cdi_dir.mkdir(parents=True, exist_ok=True)
        # JSON is valid YAML; CDI reads both, by file extension.
        written.append(_write_json(cdi_dir / "cvtpm.json", cdi_spec()))
    return written


def _write_json(path: Path, document: dict[str, Any]) -> Path:
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(path)
    return path


def _regex(literal: str) -> str:
    return literal.replace(".", r"\.")
