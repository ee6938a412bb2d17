"""The `cvtpm demo` command: the main job, end to end, on a busybox container.

It starts the real services (the daemon and the verifier) on a private state
tree, runs a container with runc, attests it, tampers with a program inside it,
and attests again. Nothing outside the demo's own directory is touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx

from cvtpm.attest.evidence import Evidence
from cvtpm.attest.verifier import Registration
from cvtpm.config import Paths
from cvtpm.errors import CvtpmError
from cvtpm.measure.journal import read_list
from cvtpm.runtime.rootfs import busybox_rootfs
from cvtpm.runtime.runner import RUNC_ROOT

TAMPERED = "/usr/bin/hello"
STEPS = 9

HELLO = "#!/bin/sh\necho 'hello from a measured container'\n"
EVIL = "#!/bin/sh\necho 'hello from a measured container'\necho 'and a changed one'\n"
REPORT = '#!/bin/sh\necho "$(cat /etc/motd) ($(ls /bin | wc -l) programs in /bin)"\n'


class DemoFailed(CvtpmError):
    """A step of the demo did not turn out as it should."""


class Demo:
    """One run of the demo in its own directory, with its own services."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.paths = Paths(state=workdir / "state", run=workdir / "run").ensure()
        self.rootfs = workdir / "rootfs"
        self.cvtpm = str(Path(sys.executable).with_name("cvtpm"))
        self.daemon_port = _free_port()
        self.verifier_port = _free_port()
        self.token = secrets.token_urlsafe(24)
        self.processes: list[subprocess.Popen] = []
        self.container: subprocess.Popen | None = None
        self.step = 0
        # Unique per run: runc names cgroups after the container.
        self.name = f"demo-{secrets.token_hex(3)}"

    # -- the story ---------------------------------------------------------------

    def run(self) -> None:
        self.header("Building a busybox root filesystem")
        self.build_rootfs()

        self.header("Starting the cvtpm daemon (vTPMs, measurement, evidence)")
        self.start_daemon()

        self.header("Starting the verifier and writing an allowlist of the rootfs")
        self.start_verifier()
        # --all-files: the default IMA policy also measures the files root
        # reads (like the kernel's tcb policy), so those must be allowed too;
        # --tpm2-tools: the container runs the host's, lent by `cvtpm run`.
        self.cli(
            "policy", "create", "--all-files", "--tpm2-tools", str(self.rootfs),
            "-o", str(self.policy_path),
        )  # fmt: skip
        self.detail(f"allowlist: {self.policy_path}")

        self.header("Running a container with runc; its programs are measured")
        self.start_container()
        self.show_inside_pcr()

        self.header("Attesting the container")
        self.register()
        first = self.attest()
        if not first["trusted"]:
            raise DemoFailed("the clean container was not trusted")

        self.header(f"Changing {TAMPERED} in the rootfs and running it inside")
        (self.rootfs / TAMPERED.lstrip("/")).write_text(EVIL)
        self.runc_exec(TAMPERED)
        self.wait_for_entries(lambda paths: paths.count(TAMPERED) >= 2)

        self.header("Attesting the container again")
        second = self.attest()
        named = [f for f in second["failures"] if f.get("path") == TAMPERED]
        if second["trusted"] or not named:
            raise DemoFailed(f"the tampered container was not flagged at {TAMPERED}")

        self.header("The container's measurement list and its vTPM")
        click.echo(self.cli("log", self.name).stdout.rstrip())
        click.echo()
        click.echo(self.cli("vtpm", "show", self.name).stdout.rstrip())

        self.header("Stopping the container (ephemeral: its vTPM goes with it)")
        self.stop_container()
        left = self.cli("vtpm", "list", "--json").stdout
        self.detail(
            "vTPMs left for containers: " + ("none" if left.strip() == "[]" else left)
        )

        click.echo()
        click.secho("Demo complete:", bold=True)
        click.echo("  first attestation:  " + _verdict_text(first))
        click.echo("  second attestation: " + _verdict_text(second))

    # -- steps -------------------------------------------------------------------

    def build_rootfs(self) -> None:
        busybox_rootfs(self.rootfs)
        (self.rootfs / "etc" / "motd").write_text("a tiny container with a vTPM\n")
        for path, text in ((TAMPERED, HELLO), ("/usr/bin/report", REPORT)):
            target = self.rootfs / path.lstrip("/")
            target.write_text(text)
            target.chmod(0o755)
        self.detail(f"{self.rootfs}: busybox, {TAMPERED}, /usr/bin/report")

    def start_daemon(self) -> None:
        self.spawn(
            "daemon",
            [*self.base, "daemon", "--listen", f"127.0.0.1:{self.daemon_port}",
             "--pool", "2"],
        )  # fmt: skip
        socket_path = self.paths.run / "daemon.sock"
        _wait(lambda: _get_unix(socket_path, "/v1/health"), 60, "the daemon")
        self.detail(f"control socket {socket_path}")
        self.detail(f"evidence on http://127.0.0.1:{self.daemon_port}")

    def start_verifier(self) -> None:
        root = self.paths.ca / "root.pem"
        _wait(root.exists, 60, "the local CA")
        token_file = self.workdir / "verifier.token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        self.spawn(
            "verifier",
            [*self.base, "verifier", "serve", "--port", str(self.verifier_port),
             "--db", f"sqlite:///{self.workdir / 'verifier.db'}",
             "--token-file", str(token_file), "--trust", str(root)],
        )  # fmt: skip
        _wait(lambda: self.verifier("GET", "/v1/health") is not None, 60, "verifier")
        self.detail(f"verifier on {self.verifier_url}, trusting {root}")

    def start_container(self) -> None:
        command = [
            *self.base, "run", "--name", self.name, "--ephemeral", "--tpm2-tools",
            str(self.rootfs), "--",
            "sh", "-c", "hello; report; exec sleep 600",
        ]  # fmt: skip
        self.detail(
            f"$ cvtpm run --name {self.name} --ephemeral --tpm2-tools ROOTFS -- "
            "sh -c 'hello; report; exec sleep 600'"
        )
        self.container = subprocess.Popen(command)
        self.wait_for_entries(lambda paths: "/usr/bin/report" in paths)
        listed = self.list_paths()
        self.detail(f"{len(listed)} entries so far: " + ", ".join(listed))

    def show_inside_pcr(self) -> None:
        out = self.runc_exec("tpm2", "pcrread", "sha256:10", quiet=True)
        value = out.strip().rsplit("0x", 1)[-1].lower()
        self.detail(f"inside the container, tpm2 pcrread sha256:10 -> {value}")
        with contextlib.suppress(subprocess.CalledProcessError):
            refused = self.runc_exec(
                "tpm2", "pcrextend", "10:sha256=" + "00" * 32, quiet=True, check=False
            )
            # TPM_RC_LOCALITY (0x907) is the filter's answer to that command.
            answer = [line for line in refused.splitlines() if "0x907" in line]
            self.detail(
                "inside the container, extending PCR 10 is refused: "
                + (answer[0].strip() if answer else refused.strip()[-200:])
            )

    def register(self) -> None:
        # What the verifier learns once: the EK certificate (checked against the
        # local CA) and the AK, from the daemon's evidence.
        nonce = secrets.token_hex(16)
        raw = httpx.get(
            f"{self.daemon_url}/v1/containers/{self.name}/evidence",
            params={"nonce": nonce},
            timeout=30,
        )
        raw.raise_for_status()
        evidence = Evidence.from_json(raw.json())
        body = Registration.from_evidence(evidence, self.daemon_url).to_json()
        body["policy"] = _json_file(self.policy_path)
        answer = self.verifier("POST", "/v1/containers", json=body)
        if not answer or not answer["accepted"]:
            raise DemoFailed(f"registration refused: {answer}")
        self.detail("registered: EK certificate chains to the local CA, AK certified")

    def attest(self) -> dict:
        result = self.verifier("POST", f"/v1/containers/{self.name}/attest")
        if result is None:
            raise DemoFailed("the verifier did not answer")
        colour = "green" if result["trusted"] else "red"
        click.secho(f"  verdict: {result['verdict']}", fg=colour, bold=True)
        first, new = result["start_index"], result["new_entries"]
        checked = (
            f"entries {first}..{first + new - 1} checked" if new else "no new entry"
        )
        self.detail(f"{checked}, quote over PCR 10 checked")
        for failure in result["failures"]:
            index = failure.get("index")
            where = f" at entry {index}" if index is not None else ""
            self.detail(f"{failure['reason']}{where}: {failure['message']}")
        return result

    def stop_container(self) -> None:
        subprocess.run(
            [
                "runc",
                "--root",
                str(self.paths.run / RUNC_ROOT),
                "kill",
                self.name,
                "KILL",
            ],
            capture_output=True,
        )
        if self.container is not None:
            self.container.wait(timeout=60)
            self.container = None

    # -- plumbing ----------------------------------------------------------------

    @property
    def base(self) -> list[str]:
        return [self.cvtpm, "--state-dir", str(self.paths.state),
                "--run-dir", str(self.paths.run)]  # fmt: skip

    @property
    def policy_path(self) -> Path:
        return self.workdir / "policy.json"

    @property
    def daemon_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon_port}"

    @property
    def verifier_url(self) -> str:
        return f"http://127.0.0.1:{self.verifier_port}"

    def header(self, text: str) -> None:
        self.step += 1
        click.echo()
        click.secho(f"[{self.step}/{STEPS}] {text}", bold=True)

    def detail(self, text: str) -> None:
        click.echo(f"  {text}")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.base, *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise DemoFailed(f"cvtpm {' '.join(args)}: {result.stderr.strip()}")
        return result

    def spawn(self, name: str, command: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "w")  # noqa: SIM115 (kept open)
        self.processes.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        )

    def verifier(self, method: str, path: str, **kwargs) -> dict | None:
        try:
            answer = httpx.request(
                method,
                self.verifier_url + path,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=60,
                **kwargs,
            )
        except httpx.TransportError:
            return None
        if answer.status_code >= 400:
            raise DemoFailed(f"verifier {method} {path}: {answer.text}")
        return answer.json()

    def runc_exec(self, *command: str, quiet: bool = False, check: bool = True) -> str:
        result = subprocess.run(
            ["runc", "--root", str(self.paths.run / RUNC_ROOT), "exec", self.name,
             *command],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise DemoFailed(f"runc exec {' '.join(command)}: {result.stderr.strip()}")
        if not quiet:
            self.detail(f"$ runc exec {self.name} {' '.join(command)}")
            for line in result.stdout.splitlines():
                self.detail(f"  {line}")
        return result.stdout + result.stderr

    def list_paths(self) -> list[str]:
        if not (self.paths.lists / self.name).is_dir():
            return []
        return [e.path for e in read_list(self.paths.lists / self.name)]

    def wait_for_entries(self, predicate) -> None:
        _wait(lambda: predicate(self.list_paths()), 60, "the measurements")

    def cleanup(self) -> None:
        """Stop everything the demo started, container first, then the services."""
        with contextlib.suppress(Exception):
            self.stop_container()
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        _stop_leftover_vtpms(self.paths)


def _verdict_text(result: dict) -> str:
    if result["trusted"]:
        return "trusted"
    paths = sorted({f["path"] for f in result["failures"] if f.get("path")})
    return (
        "not trusted ("
        + ", ".join(paths or [f["reason"] for f in result["failures"]])
        + ")"
    )


def _stop_leftover_vtpms(paths: Paths) -> None:
    """Kill any swtpm still running on the demo's state (the daemon's pool)."""
    from cvtpm.vtpm.manager import VtpmManager

    with contextlib.suppress(Exception):
        VtpmManager(paths).delete_all()


def _json_file(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_unix(socket_path: Path, url_path: str) -> bool:
    if not socket_path.exists():
        return False
    try:
        transport = httpx.HTTPTransport(uds=str(socket_path))
        with httpx.Client(transport=transport, timeout=5) as client:
            return client.get(f"http://cvtpm{url_path}").status_code == 200
    except httpx.TransportError:
        return False


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@click.command()
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the demo's directory (state, logs, rootfs) for a look afterwards.",
)
def demo(keep):
    """The main job, end to end: a container, its vTPM, measurement, attestation."""
    if os.geteuid() != 0:
        raise DemoFailed("the demo needs root (fanotify permission events and runc)")
    workdir = Path(tempfile.mkdtemp(prefix="cvtpm-demo-", dir="/tmp"))
    run = Demo(workdir)
    click.secho(f"cvtpm demo in {workdir}", bold=True)
    try:
        run.run()
    except BaseException:
        click.echo(f"  (the demo's files and logs are kept in {workdir})", err=True)
        keep = True
        raise
    finally:
        run.cleanup()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


COMMANDS = [demo]
