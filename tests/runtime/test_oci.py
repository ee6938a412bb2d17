"""OCI state parsing, annotations, hook declarations and the runc bundle's config."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from cvtpm.config import Paths
from cvtpm.errors import ConfigError, ParseError
from cvtpm.runtime import hook_main, install, oci
from cvtpm.runtime.bundle import RunSpec, oci_config
from cvtpm.runtime.hook import refuse_exposed_state

STATE = {
    "ociVersion": "1.0.2",
    "id": "abc",
    "status": "creating",
    "pid": 4242,
    "bundle": "/b",
    "annotations": {"io.cvtpm.vtpm": "enabled"},
}
PATHS = Paths(state=Path("/var/lib/cvtpm"), run=Path("/run/cvtpm"))


def test_state_is_parsed():
    """The fields a hook needs come out of the state JSON."""
    state = oci.parse_state(json.dumps(STATE))
    assert (state.id, state.pid, state.bundle) == ("abc", 4242, Path("/b"))
    assert state.annotations == {"io.cvtpm.vtpm": "enabled"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{",
        json.dumps({**STATE, "id": ""}),
        json.dumps({**STATE, "pid": -1}),
        json.dumps({**STATE, "bundle": 7}),
        json.dumps({**STATE, "bundle": "relative/b"}),
        json.dumps({**STATE, "pid": True}),
        json.dumps({**STATE, "annotations": ["x"]}),
        '{"id": "abc", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
)
def test_bad_state_is_a_parse_error(text):
    """Malformed state is a ParseError, never a crash."""
    with pytest.raises(ParseError):
        oci.parse_state(text)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (os.mkfifo, "is not a regular file"),
        (os.mkdir, "is not a regular file"),
        (lambda p: p.write_bytes(b"{" + b" " * oci.MAX_CONFIG_SIZE), "larger than"),
        (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
        (lambda p: p.write_text("{"), "cannot read the OCI config"),
        (lambda p: None, "cannot read the OCI config .*No such file"),
    ],
)
def test_a_bad_config_json_is_a_config_error(tmp_path, make, message):
    """A FIFO (never waited on), a directory, a huge or deep or broken file."""
    make(tmp_path / "config.json")
    with pytest.raises(ConfigError, match=message):
        oci.read_config(tmp_path)


def test_request_from_annotations(tmp_path):
    """Annotations name the vTPM, make it ephemeral and carry the policy's text."""
    policy = tmp_path / "policy"
    policy.write_text("measure func=BPRM_CHECK\n")
    request = oci.request_from(
        {
            "io.cvtpm.vtpm": "Enabled",
            "io.cvtpm.name": "web-1",
            "io.cvtpm.ephemeral": "true",
            "io.cvtpm.policy": str(policy),
        },
        "id",
    )
    assert request.name == "web-1" and request.ephemeral
    assert request.policy == "measure func=BPRM_CHECK\n"

    assert oci.request_from({}, "id") is None
    assert oci.request_from({"io.cvtpm.vtpm": "enabled"}, "cid").name == "cid"


@pytest.mark.parametrize(
    "annotations",
    [
        {"io.cvtpm.name": "../etc"},
        {"io.cvtpm.expose": "pipe"},
        {"io.cvtpm.policy": "relative/path"},
        {"io.cvtpm.policy": "/nonexistent/policy"},
    ],
)
def test_bad_annotations_are_config_errors(annotations):
    """Unusable names, exposures and policy paths are refused with ConfigError."""
    with pytest.raises(ConfigError):
        oci.request_from({"io.cvtpm.vtpm": "enabled", **annotations}, "id")


def test_hooks_d_files_follow_schema_1_0_0():
    """Each hooks.d file has version, hook.path/args, when.annotations and stages."""
    documents = install.hooks_d_documents(PATHS)
    # No poststop: the daemon tears a container down when its process exits.
    assert sorted(documents) == ["cvtpm-create-runtime.json"]
    for name, document in documents.items():
        assert document["version"] == "1.0.0"
        # The compiled hook, built with the package.
        assert document["hook"]["path"] == str(install.COMPILED_HOOK)
        argv = document["hook"]["args"]
        assert argv[0] == str(install.COMPILED_HOOK)
        assert argv[-1] == name[6:-5]
        ((key, value),) = document["when"]["annotations"].items()
        assert re.search(key, "io.cvtpm.vtpm") and not re.search(key, "ioXcvtpmXvtpm")
        assert re.search(value, "enabled")


def test_a_chosen_python_runs_the_script():
    """--python runs hook_main.py with that interpreter, on its own (-I -S)."""
    documents = install.hooks_d_documents(PATHS, Path(sys.executable))
    hook = documents["cvtpm-create-runtime.json"]["hook"]
    assert hook["path"] == str(Path(sys.executable).absolute())
    assert hook["args"][1:4] == ["-I", "-S", hook_main.__file__]


def test_install_writes_files(tmp_path):
    """install() writes the hook and the CDI spec, and drops an old poststop hook."""
    (tmp_path / "hooks.d").mkdir()
    (tmp_path / "hooks.d" / "cvtpm-poststop.json").write_text("{}")
    written = install.install(PATHS, tmp_path / "hooks.d", tmp_path / "cdi")
    assert [p.name for p in written] == ["cvtpm-create-runtime.json", "cvtpm.json"]
    assert sorted(p.name for p in (tmp_path / "hooks.d").iterdir()) == [
        "cvtpm-create-runtime.json"
    ]
    cdi = json.loads((tmp_path / "cdi" / "cvtpm.json").read_text())
    assert cdi["kind"] == "cvtpm.io/vtpm"
    with pytest.raises(ConfigError, match="no Python interpreter"):
        install.install(PATHS, tmp_path / "hooks.d", None, python=tmp_path / "nope")


def test_bundle_config():
    """The runc config runs the hooks, carries the annotations and the TCTI."""
    spec = RunSpec(
        rootfs=Path("/r"),
        args=["sh"],
        name="n1",
        ephemeral=True,
        binds=[(Path("/usr/bin/tpm2"), Path("/usr/bin/tpm2"))],
    )
    config = oci_config(spec, PATHS)
    assert config["process"]["terminal"] is False
    assert "TPM2TOOLS_TCTI=swtpm:path=/run/tpm/tpm.sock" in config["process"]["env"]
    assert config["annotations"]["io.cvtpm.name"] == "n1"
    assert config["annotations"]["io.cvtpm.ephemeral"] == "true"
    assert sorted(config["hooks"]) == ["createRuntime"]
    assert {"destination": "/run", "type": "tmpfs"}.items() <= next(
        m for m in config["mounts"] if m["destination"] == "/run"
    ).items()
    bind = config["mounts"][-1]
    assert bind["destination"] == "/usr/bin/tpm2" and "ro" in bind["options"]
    namespaces = {ns["type"] for ns in config["linux"]["namespaces"]}
    assert namespaces == {"pid", "network", "ipc", "uts", "mount"}


def test_device_rules_and_nodes(tmp_path):
    """Device exposure allows the tpm and tpmrm majors and copies device numbers."""
    from cvtpm.runtime import expose

    devices = tmp_path / "devices"
    devices.write_text(
        "Character devices:\n  1 mem\n253 tpmrm\n254 tpm\n\nBlock devices:\n"
    )
    rules = expose.device_cgroup_rules(devices)
    assert {(r["major"], r.get("minor")) for r in rules} == {
        (10, 224),
        (253, None),
        (254, None),
    }

    nodes = expose.device_nodes(Path("/dev/null"), Path("/dev/zero"))
    assert [(n.inside, n.major, n.minor) for n in nodes] == [
        (Path("/dev/tpm0"), 1, 3),
        (Path("/dev/tpmrm0"), 1, 5),
    ]
    assert expose.tcti_env("device")["TPM2TOOLS_TCTI"] == "device:/dev/tpmrm0"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("fifo", "is not a regular file"),
        ("empty", "is empty"),
        ("binary", "is not UTF-8 text"),
        ("directory", "is not a regular file"),
    ],
)
def test_unfit_policy_files_are_refused_at_once(tmp_path, kind, message):
    """A FIFO (which would block), an empty, binary or directory policy is refused."""
    path = tmp_path / "policy"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "empty":
        path.write_text("  \n")
    elif kind == "binary":
        path.write_bytes(b"measure \xff\xfe")
    else:
        path.mkdir()
    with pytest.raises(ConfigError, match=message):
        oci.request_from(
            {"io.cvtpm.vtpm": "enabled", "io.cvtpm.policy": str(path)}, "i"
        )


def test_a_container_that_would_see_cvtpms_state_is_refused(tmp_path):
    """A rootfs or bind mount holding (or inside) the state or run directory."""
    paths = Paths(state=tmp_path / "state", run=tmp_path / "run")
    rootfs = tmp_path / "rootfs"
    for where in (paths.state / "ca", paths.run, rootfs):
        where.mkdir(parents=True)
    fine = {"mounts": [{"destination": "/x", "type": "bind", "source": "/usr/bin"}]}
    refuse_exposed_state(fine, tmp_path, rootfs, paths)

    for source in (str(paths.state / "ca"), str(tmp_path), "/"):
        config = {
            "mounts": [{"destination": "/s", "source": source, "options": ["rbind"]}]
        }
        with pytest.raises(ConfigError, match="would show the container"):
            refuse_exposed_state(config, tmp_path, rootfs, paths)
    with pytest.raises(ConfigError, match="the rootfs"):
        refuse_exposed_state({}, tmp_path, tmp_path, paths)


@pytest.mark.root
def test_other_names_for_cvtpms_state_are_refused_too(tmp_path):
    """A hard link to the master key, or the state directory mounted elsewhere."""
    import subprocess

    paths = Paths(state=tmp_path / "state", run=tmp_path / "run")
    (paths.state / "ca").mkdir(parents=True)
    paths.run.mkdir()
    (paths.state / "master.key").write_bytes(b"k" * 32)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.link(paths.state / "master.key", outside / "key")
    alias = tmp_path / "alias"
    alias.mkdir()
    subprocess.run(["mount", "--bind", str(paths.state), str(alias)], check=True)
    try:
        for source in (outside / "key", alias, alias / "ca"):
            config = {
                "mounts": [{"destination": "/x", "type": "bind", "source": str(source)}]
            }
            with pytest.raises(ConfigError, match="would show the container"):
                refuse_exposed_state(config, tmp_path, tmp_path / "rootfs", paths)
    finally:
        subprocess.run(["umount", str(alias)], check=True)
