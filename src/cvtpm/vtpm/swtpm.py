"""Starting and stopping one swtpm process for one vTPM's state."""

from __future__ import annotations

import contextlib
import ctypes
import enum
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cvtpm.errors import ConfigError, StateError
from cvtpm.vtpm import ctrl, staging
from cvtpm.vtpm.keys import key_pipe

# include/uapi/linux/prctl.h
_PR_SET_CHILD_SUBREAPER = 36

# sun_path is 108 bytes with its terminating NUL (unix(7)).
MAX_SOCKET_PATH = 107
_STOP_TIMEOUT = 10.0
# How long a spawned swtpm whose first command failed is given to finish exiting.
_EXIT_GRACE = 2.0

# The swtpm processes `spawn` started, by pid, until they are reaped.
_CHILDREN: dict[int, subprocess.Popen] = {}

# What swtpm logs when the state does not decrypt or fails its HMAC
# (swtpm src/swtpm/swtpm_nvstore.c).
_UNREADABLE_STATE = ("Verification of HMAC failed", "GetDecryptedData", "decrypt")
# What it logs when another swtpm holds the state's lock (swtpm_nvstore_dir.c);
# any other failure of the lock file is reported as it is.
_LOCK_HELD = "Could not lock access to lockfile: Resource temporarily unavailable"


@dataclass(frozen=True)
class SwtpmPaths:
    """Where one vTPM's swtpm keeps state and listens."""

    state_dir: Path
    run_dir: Path

    @property
    def socket(self) -> Path:
        """The TPM command socket; the TCTI is `swtpm:path=<socket>`."""
        return self.run_dir / "tpm.sock"

    @property
    def ctrl_socket(self) -> Path:
        """The control channel, where tcti-swtpm expects it: next to the socket."""
        return self.run_dir / "tpm.sock.ctrl"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "swtpm.log"

    @property
    def permanent_state(self) -> Path:
        """libtpms's permanent state (NV, keys' seeds, saved PCRs)."""
        return self.state_dir / "tpm2-00.permall"

    @property
    def tcti(self) -> str:
        return f"swtpm:path={self.socket}"


class StateUnreadable(StateError):
    """swtpm could not decrypt or verify the vTPM's saved state."""


def swtpm_binary() -> str:
    """The swtpm executable, or a ConfigError saying how to install it."""
    path = shutil.which("swtpm")
    if path is None:
        raise ConfigError(
            "swtpm is not installed; run `apt-get install swtpm swtpm-tools`"
        )
    return path


def spawn(paths: SwtpmPaths, state_key: bytes, staged: bool = False) -> int:
    """Start swtpm on `paths`, state encrypted by `state_key`; its pid, at once.

    The sockets are bound here and handed to swtpm, so a command sent while
    swtpm is still starting (about 5 ms) waits in the socket's queue: the
    caller goes on with its own work meanwhile (a new vTPM's registry entry).
    If swtpm exits instead (state that does not decrypt, or that another
    swtpm runs), the first command fails, and `exit_reason` says why.
    TPM2_Startup is left to the caller. A `staged` swtpm, for a vTPM being
    made, keeps its state in the run directory until `staging.commit`; that
    its state directory is in use is then a StateError at once.
    """
    _prepare(paths)
    listeners: list[socket.socket] = []
    key_fd = log_fd = lock_fd = None
    state_dir = paths.state_dir.absolute()
    try:
        if staged:
            state_dir, lock_fd = staging.prepare(paths.state_dir, paths.run_dir)
        listeners += [_listen(paths.socket), _listen(paths.ctrl_socket)]
        server, ctrl = (listener.fileno() for listener in listeners)
        key_fd = key_pipe(state_key)
        # What swtpm says before its log is open (a bad option) goes there too.
        log_fd = os.open(
            paths.log_file,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        child = subprocess.Popen(
            [
                *_command(paths, state_dir, key_fd),
                "--server", f"type=unixio,fd={server}",
                "--ctrl", f"type=unixio,fd={ctrl}",
            ],
            # swtpm never uses the lock's descriptor: holding it is its use.
            pass_fds=tuple(
                fd for fd in (key_fd, server, ctrl, lock_fd) if fd is not None
            ),
            umask=0o077,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_fd,
            # What --daemon would do: its own session (no signal from our
            # terminal reaches it), and no hold on our working directory.
            start_new_session=True,
            cwd="/",
        )  # fmt: skip
    finally:
        for fd in key_fd, log_fd, lock_fd:
            if fd is not None:
                os.close(fd)
        for listener in listeners:
            # swtpm holds them now; with ours closed, its exit refuses commands.
            listener.close()
    _CHILDREN[child.pid] = child
    return child.pid


def exit_reason(paths: SwtpmPaths, pid: int) -> StateError | None:
    """Why a spawned swtpm exited, or None if it still runs (after a moment)."""
    child = _CHILDREN.get(pid)
    with contextlib.suppress(StateError):
        _wait_exit(pid, _EXIT_GRACE)
    if is_running(pid):
        return None
    status = None if child is None else child.poll()
    if status is not None and status < 0:
        try:
            by = signal.Signals(-status).name
        except ValueError:  # a real-time signal has no name
            by = f"signal {-status}"
        return StateError(
            f"swtpm (pid {pid}) was killed by {by} while its vTPM was being set up"
        )
    if status == 0:
        return StateError(
            f"swtpm (pid {pid}) exited (status 0) while its vTPM was being set up"
        )
    return _refusal(paths, _read_log(paths))


def _prepare(paths: SwtpmPaths) -> None:
    """Check the socket path's length, make the directories, clear stale files."""
    if len(str(paths.ctrl_socket)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"socket path {paths.ctrl_socket} is longer than {MAX_SOCKET_PATH} bytes; "
            "choose a shorter --run-dir"
        )
    paths.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in paths.socket, paths.ctrl_socket:
        stale.unlink(missing_ok=True)


def _command(paths: SwtpmPaths, state_dir: Path, key_fd: int) -> list[str]:
    """swtpm's arguments but for its sockets."""
    return [
        swtpm_binary(),
        "socket",
        "--tpm2",
        # Absolute: swtpm runs in /, and a relative path would name another place.
        "--tpmstate", f"dir={state_dir},mode=0600",
        "--key", f"fd={key_fd},mode=aes-256-cbc,format=binary",
        # TPM2_Startup is ours to send: STATE to resume after an orderly
        # stop, CLEAR otherwise (see TpmClient.startup).
        "--flags", "not-need-init",
        "--log", f"file={paths.log_file.absolute()},level=1,truncate",
    ]  # fmt: skip


def _listen(path: Path) -> socket.socket:
    """A listening unix socket at `path`, mode 0600, for swtpm to take over."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen()
    except BaseException:
        listener.close()
        raise
    return listener


def _refusal(paths: SwtpmPaths, log: str) -> StateError:
    """The error for a swtpm that would not start, from what it logged."""
    if any(marker in log for marker in _UNREADABLE_STATE):
        return StateUnreadable(
            f"the state in {paths.state_dir} does not decrypt or failed its "
            "integrity check (wrong master key, or a damaged file)"
        )
    if _LOCK_HELD in log:
        return StateError(
            f"the state in {paths.state_dir} is in use by another swtpm; "
            "a vTPM's state never runs twice (stop that swtpm first: its "
            f"command line names {paths.state_dir.name}, the vTPM's UUID)"
        )
    # A connection's end is logged each time: noise here. After a bad
    # option, swtpm prints its whole usage; what went wrong comes before it.
    said = "\n".join(
        line
        for line in log.partition("Usage:")[0].splitlines()
        if line.strip() and line.strip() != "Data client disconnected"
    )
    return StateError(
        f"swtpm failed to start: {said.strip()[-500:] or '(it logged nothing)'}"
    )


class Standing(enum.Enum):
    """Where a recorded swtpm stands towards its vTPM (see `standing`)."""

    NONE = "no swtpm on its state"
    RUNS = "runs, reached through this run directory"
    ELSEWHERE = "runs with another run directory"
    CUT_OFF = "cut off: on its state, but nothing reaches it"


def standing(pid: int | None, paths: SwtpmPaths) -> Standing:
    """Where `pid` stands towards the vTPM of `paths`, from one reading of its
    command line: no live swtpm on its state; one that runs, reached through
    `paths.run_dir`; one on its state but started with another run
    directory (a command given another --run-dir than the daemon's: only
    not where that command looks); or one cut off, which with its run
    directory removed has lost its sockets (nothing reaches it) and, if it
    was made since it started, the link to its state (it can no longer save
    it), but still holds the state directory's lock, its lock file open.
    A cut-off swtpm is only to be killed."""
    started = _started_with(pid)
    if started is None:
        return Standing.NONE
    reachable = _reachable(started, paths)
    if not reachable and not _holds_open(pid, paths.state_dir / staging.LOCK_FILE):
        return Standing.NONE
    if started.run_dir is not None and os.path.realpath(
        started.run_dir
    ) != os.path.realpath(paths.run_dir):
        return Standing.ELSEWHERE
    return Standing.RUNS if reachable else Standing.CUT_OFF


def runs_on(pid: int | None, paths: SwtpmPaths) -> bool:
    """True if `pid` is a live swtpm of this vTPM that can still be used: one
    given its state directory, however spelled, or a link to it (the link of
    cvtpm.vtpm.staging, as long as it is there), and whose sockets are still
    in its own run directory (see `own_run_dir`) to reach it by."""
    started = _started_with(pid)
    return started is not None and _reachable(started, paths)


def holds(pid: int | None, paths: SwtpmPaths) -> bool:
    """True if `pid` is a live swtpm on this vTPM's state, even one cut off
    (see `standing`)."""
    return standing(pid, paths) is not Standing.NONE


def own_run_dir(pid: int | None) -> Path | None:
    """The run directory a live swtpm was started with, which holds its
    sockets and its log; None if there is no such swtpm."""
    started = _started_with(pid)
    return None if started is None else started.run_dir


def _reachable(started: _Started, paths: SwtpmPaths) -> bool:
    """True if a swtpm started so is on this vTPM's state and its sockets are
    in its own run directory."""
    if started.run_dir is None or not _on_state(started.tpmstate, paths):
        return False
    sockets = SwtpmPaths(paths.state_dir, started.run_dir)
    return _is_socket(sockets.socket) and _is_socket(sockets.ctrl_socket)


@dataclass(frozen=True)
class _Started:
    """What a live swtpm was given on its command line."""

    tpmstate: str  # --tpmstate dir=DIR,mode=0600
    run_dir: Path | None  # where --log file=DIR/swtpm.log,... lies


def _started_with(pid: int | None) -> _Started | None:
    """The state and run directories a live swtpm was given; None if `pid`
    is no live swtpm, or one not started with a state directory."""
    if not is_running(pid):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            arguments = cmdline.read().decode(errors="replace").split("\0")
        where = arguments[arguments.index("--tpmstate") + 1]
    except (OSError, ValueError, IndexError):
        return None
    run_dir = None
    with contextlib.suppress(ValueError, IndexError):
        log = arguments[arguments.index("--log") + 1]
        run_dir = Path(log.removeprefix("file=").split(",level=", 1)[0]).parent
    return _Started(where.removeprefix("dir=").rsplit(",mode=", 1)[0], run_dir)


def _on_state(directory: str, paths: SwtpmPaths) -> bool:
    """True if a swtpm's --tpmstate `directory` is this vTPM's state."""
    if _same_link(directory, staging.state_link(paths.run_dir)):
        return True
    try:
        return os.path.samefile(directory, paths.state_dir)
    except OSError:
        return False


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _same_link(path: str, link: Path) -> bool:
    """True if `path` names `link` itself, however spelled (not its target)."""
    try:
        return os.path.samestat(os.lstat(path), os.lstat(link))
    except OSError:
        return False


def _holds_open(pid: int, path: Path) -> bool:
    """True if process `pid` has the file `path` open."""
    try:
        wanted = os.stat(path)
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in descriptors:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.stat(f"/proc/{pid}/fd/{fd}"), wanted):
                return True
    return False


def is_running(pid: int | None) -> bool:
    """True if `pid` is a live (not zombie) swtpm process."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            fields = stat_file.read().rsplit(")", 1)
        with open(f"/proc/{pid}/comm") as comm:
            name = comm.read().strip()
    except OSError:
        _CHILDREN.pop(pid, None)  # reaped by someone else: a waiting subreaper
        return False
    if fields[1].split()[0] == "Z":
        _reap(pid)
        return False
    return name == "swtpm"


def become_subreaper() -> None:
    """Adopt orphaned descendants, such as swtpm processes, so as to reap them.

    A vTPM's swtpm outlives the process that spawned it (a daemon worker
    that died, a `cvtpm vtpm start` that exited); without a subreaper its
    exit status goes to PID 1, which in some containers and sandboxes never
    collects it (zombies).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _reap(pid: int) -> None:
    """Collect an exited swtpm's status if it is our (spawned or adopted) child."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(paths: SwtpmPaths, pid: int | None) -> None:
    """CMD_SHUTDOWN on the control channel, then wait for swtpm to exit."""
    if not is_running(pid):
        return
    ctrl.shutdown(paths.ctrl_socket)
    _wait_exit(pid, _STOP_TIMEOUT)


def kill(pid: int | None) -> None:
    """SIGKILL swtpm and wait for it to go: when it cannot, or need not, be
    stopped in order (delete, a failed creation, a cut-off or failed TPM)."""
    if not is_running(pid):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _wait_exit(pid, _STOP_TIMEOUT)


def _wait_exit(pid: int, timeout: float) -> None:
    """Wait for swtpm to exit, woken by its pidfd rather than polling."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        # The pidfd turns readable once the process has exited (a zombie
        # counts); is_running then reaps it if it is our adopted child.
        if not select.select([pidfd], [], [], timeout)[0] and is_running(pid):
            raise StateError(f"swtpm (pid {pid}) did not exit within {timeout:.0f} s")
    finally:
        os.close(pidfd)
    is_running(pid)


def _read_log(paths: SwtpmPaths) -> str:
    try:
        return paths.log_file.read_text(errors="replace")
    except OSError:
        return ""
