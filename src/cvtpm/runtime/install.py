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
import os
import sys
from pathlib import Path
from typing import Any

from cvtpm.config import Paths
from cvtpm.errors import ConfigError
from cvtpm.runtime import hook_main
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
# The compiled hook, built by setup.py beside hook_main.py.
COMPILED_HOOK = Path(hook_main.__file__).resolve().with_name("cvtpm-hook")
# What older versions installed, removed by install().
_STALE_HOOK_FILES = ("cvtpm-poststop.json",)


def hook_command(python: Path | None = None) -> tuple[str, list[str]]:
    """The path and leading argv of the hook runtimes run for every container.

    The compiled hook (cvtpm-hook next to this module, built with the
    package) starts in under a millisecond.  Given `python`, or where the
    program was not built, the same hook in Python runs instead:
    `python -I -S hook_main.py`, on its own, starts in half the time of the
    `cvtpm-hook` command, which loads site-packages first; the script needs
    only the standard library, so any Python 3 will do.
    """
    if python is None and os.access(COMPILED_HOOK, os.X_OK):
        return str(COMPILED_HOOK), [str(COMPILED_HOOK)]
    interpreter = Path(python or sys.executable).absolute()
    if not interpreter.is_file() or not os.access(interpreter, os.X_OK):
        raise ConfigError(f"no Python interpreter at {interpreter}")
    script = Path(hook_main.__file__).resolve()
    # argv[0] is the full path: Python finds its standard library from it.
    return str(interpreter), [str(interpreter), "-I", "-S", str(script)]


def hook_args(stage: str, paths: Paths) -> list[str]:
    """The hook's arguments after the script, at an OCI stage, for these paths."""
    return [
        "--state-dir",
        str(paths.state),
        "--run-dir",
        str(paths.run),
        HOOK_STAGES[stage],
    ]


def _hook(stage: str, paths: Paths, python: Path | None) -> dict[str, Any]:
    path, argv = hook_command(python)
    return {"path": path, "args": [*argv, *hook_args(stage, paths)]}


def runc_hooks(
    paths: Paths, python: Path | None = None
) -> dict[str, list[dict[str, Any]]]:
    """config.json's `hooks` object that runs cvtpm's hook for runc."""
    return {
        stage: [{**_hook(stage, paths, python), "env": [HOOK_PATH_ENV]}]
        for stage in INSTALLED_STAGES
    }


def hooks_d_documents(
    paths: Paths, python: Path | None = None
) -> dict[str, dict[str, Any]]:
    """podman hooks.d files (schema 1.0.0), by file name, one per stage."""
    return {
        f"cvtpm-{HOOK_STAGES[stage]}.json": {
            "version": "1.0.0",
            "hook": {**_hook(stage, paths, python), "env": [HOOK_PATH_ENV]},
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
    paths: Paths,
    hooks_dir: Path = DEFAULT_HOOKS_DIR,
    cdi_dir: Path | None = DEFAULT_CDI_DIR,
    python: Path | None = None,
) -> list[Path]:
    """Write the hooks.d files (and the CDI spec); returns the files written."""
    documents = hooks_d_documents(paths, python)
    written = []
    try:
        hooks_dir.mkdir(parents=True, exist_ok=True)
        for name, document in documents.items():
            written.append(_write_json(hooks_dir / name, document))
        for stale in _STALE_HOOK_FILES:
            (hooks_dir / stale).unlink(missing_ok=True)
        if cdi_dir is not None:
            cdi_dir.mkdir(parents=True, exist_ok=True)
            # JSON is valid YAML; CDI reads both, by file extension.
            written.append(_write_json(cdi_dir / "cvtpm.json", cdi_spec()))
    except OSError as exc:
        raise ConfigError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return written


def _write_json(path: Path, document: dict[str, Any]) -> Path:
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(path)
    return path


def _regex(literal: str) -> str:
    return literal.replace(".", r"\.")
