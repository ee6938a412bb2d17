"""The vTPM manager: manufacture, start, stop and delete per-container vTPMs."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from cvtpm.ca import LocalCa
from cvtpm.config import Paths
from cvtpm.errors import (
    ConfigError,
    CvtpmError,
    NotFoundError,
    StateError,
    TpmError,
    UsageError,
)
from cvtpm.locking import exclusive
from cvtpm.names import check_name
from cvtpm.pidwatch import is_same_process
from cvtpm.server.request import recorded_process
from cvtpm.tpm.client import BANK_ALGS, TpmClient
from cvtpm.tpm.templates import AK_HANDLES, EK_PROFILES
from cvtpm.vtpm import ctrl, staging, swtpm
from cvtpm.vtpm.info import StartReport, VtpmInfo
from cvtpm.vtpm.keys import derive_state_key, load_or_create_master_key
from cvtpm.vtpm.manufacture import manufacture
from cvtpm.vtpm.registry import Registry, VtpmRecord

log = logging.getLogger(__name__)

# Placeholder names of pooled vTPMs; a user's names cannot start with "_".
POOL_PREFIX = "_pool-"
# What a vTPM loses when its swtpm dies without TPM2_Shutdown(STATE): the
# volatile state (TPM 2.0 Part 1, section 36.7). Keys, NV and the EK
# certificate are in the permanent state, written on every change.
VOLATILE_STATE = ["PCR values", "loaded objects and sessions"]


class VtpmManager:
    """Owns every vTPM on this host: their state, processes and registry entries."""

    def __init__(self, paths: Paths | None = None):
        self.paths = paths or Paths.from_env()
        self.paths.ensure()
        self.registry = Registry(self.paths.registry_url)
        self._ca: LocalCa | None = None
        self._master_key: bytes | None = None

    # -- lookups --------------------------------------------------------------

    @property
    def ca(self) -> LocalCa:
        """The local CA, created on first use."""
        if self._ca is None:
            self._ca = LocalCa(self.paths.ca)
        return self._ca

    def get(self, name: str) -> VtpmInfo:
        """The vTPM called `name`, or NotFoundError."""
        return self._info(self.registry.get(name))

    def list(self) -> list[VtpmInfo]:
        """Every vTPM on this host, by name."""
        return [self._info(record) for record in self.registry.all()]

    def swtpm_paths(self, name: str) -> swtpm.SwtpmPaths:
        """Where the named vTPM keeps its state and sockets."""
        return self._paths(self.registry.get(name))

    def client(self, name: str) -> TpmClient:
        """A TPM connection to the named, running vTPM."""
        return TpmClient(self.swtpm_paths(name).tcti)

    # -- lifecycle ------------------------------------------------------------

    def create(
        self,
        name: str,
        ek_types: Iterable[str] = ("ecc",),
        banks: Iterable[str] | None = None,
        ak_type: str = "ecc",
        start: bool = True,
        ephemeral: bool = False,
        pooled: bool = False,
    ) -> VtpmInfo:
        """Manufacture a vTPM: EKs with CA certificates in NV, and a certified AK.

        A `pooled` vTPM gets a placeholder name and waits, running, for
        `claim_pooled` to give it to a container.
        """
        if pooled:
            name = f"{POOL_PREFIX}{uuid.uuid4().hex}"
        else:
            check_name(name)
        ek_types = _check_choices("EK type", ek_types, EK_PROFILES)
        wanted_banks = _check_choices("PCR bank", banks, BANK_ALGS) if banks else None
        _check_choices("AK type", [ak_type], AK_HANDLES)

        vtpm_uuid = str(uuid.uuid4())
        paths = self.uuid_paths(vtpm_uuid)
        state_key = self._state_key(vtpm_uuid)
        pid = None
        with self._locked(vtpm_uuid):
            # swtpm starts up while the record is written; its first command
            # waits for it in the socket's queue. The vTPM is made on its run
            # directory's tmpfs, and its state goes to disk once it is done
            # (cvtpm.vtpm.staging).
            try:
                pid = swtpm.spawn(paths, state_key, staged=True)
                record = VtpmRecord(
                    name=name,
                    uuid=vtpm_uuid,
                    state="creating",
                    # So that whoever removes a record left "creating" by a
                    # crash also stops its swtpm.
                    pid=pid,
                    banks="",
                    ak_type=ak_type,
                    ephemeral=ephemeral,
                    pooled=pooled,
                )
                self.registry.add(record)
            except BaseException:
                # The name was not ours (or the registry failed): nothing of
                # this vTPM is recorded, so only its files and process go.
                _discard(paths, pid)
                raise
            try:
                fields = self._manufacture(paths, pid, record, wanted_banks, ek_types)
                staging.commit(paths.state_dir, paths.run_dir)
                record = self.registry.update(
                    name, state="running", pid=pid, orderly=False, **fields
                )
            except BaseException:
                _discard(paths, pid)
                self.registry.remove(name)
                raise

        log.info("created vTPM %s (EK %s, AK %s)", name, ",".join(ek_types), ak_type)
        if not start:
            self.stop(name)
            return self.get(name)
        return self._info(record)

    def start(self, name: str, *, unless_stopped: bool = False) -> StartReport | None:
        """Run the vTPM from its saved state, and say what, if anything, was lost.

        With `unless_stopped` (a supervisor bringing back a swtpm that died),
        a vTPM that someone stopped on purpose stays stopped: None.
        """
        paths = self.swtpm_paths(name)
        with self._locked(paths.state_dir.name):
            record = self.registry.get(name)
            standing = self._standing(name, record, paths)
            if unless_stopped and record.state in ("stopped", "idle"):
                return None
            if record.state == "corrupt" and not paths.permanent_state.exists():
                raise StateError(
                    f"vTPM {name!r} has unreadable state, set aside in "
                    f"{paths.state_dir / 'quarantine'}; copy a good "
                    f"tpm2-00.permall into {paths.state_dir} and start it again, "
                    "or delete the vTPM"
                )
            if record.state == "creating":
                raise _unfinished(name)
            if standing is swtpm.Standing.RUNS:
                return StartReport(name, record.pid, resumed=True, was_running=True)
            if standing is swtpm.Standing.CUT_OFF:
                _kill_cut_off(name, record.pid)
            if not paths.permanent_state.exists():
                # Starting swtpm now would manufacture a blank TPM under the
                # old name: a new EK that no certificate vouches for.
                raise StateError(
                    f"vTPM {name!r} has no state in {paths.state_dir}; it was "
                    "removed or never written; refusing to start a blank TPM"
                )

            pid = swtpm.spawn(paths, self._state_key(record.uuid))
            started = False
            try:
                with _first_commands(paths, pid), TpmClient(paths.tcti) as tpm:
                    resumed = tpm.startup()
                    # Only a resumed state is worth saving again: after a
                    # clear start-up that would pass the reset for a resume.
                    started = resumed
                    tpm.disable_platform_hierarchy()
                lost = [] if resumed else list(VOLATILE_STATE)
                if not resumed and record.orderly:
                    lost.append(
                        "the saved state of an orderly stop (it did not resume)"
                    )
                unclean = record.state in ("running", "corrupt") or not record.orderly
                # Under the lock: a second start must find it running.
                self.registry.update(
                    name,
                    state="running",
                    pid=pid,
                    orderly=False,
                    restarts=record.restarts + (1 if unclean else 0),
                )
            except swtpm.StateUnreadable as exc:
                kept = self._quarantine(paths)
                self.registry.update(name, state="corrupt", pid=None)
                raise StateError(
                    f"vTPM {name!r}: {exc}; the state was kept in {kept}"
                ) from exc
            except BaseException:
                # Not recorded as running, it must not run unrecorded either;
                # once resumed, it stops in order, so its saved state is kept.
                _end(name, paths, pid, orderly=started)
                raise

        report = StartReport(name, pid, resumed=resumed, lost=lost)
        log.log(logging.INFO if resumed else logging.WARNING, report.describe())
        return report

    def stop(self, name: str, force: bool = False, idle: bool = False) -> None:
        """Orderly stop: TPM2_Shutdown(STATE), then CMD_SHUTDOWN so swtpm saves it.

        `idle` marks a vTPM released while its container runs (cvtpm.vtpm.idle):
        it shows as "idle" rather than "stopped", and comes back on first use.
        """
        if not force:
            self._refuse_if_in_use(name, "stop")
        paths = self.swtpm_paths(name)
        with self._locked(paths.state_dir.name):
            record = self.registry.get(name)
            standing = self._standing(name, record, paths)
            if record.state == "corrupt":
                return  # nothing runs; it stays marked until its state is restored
            if record.state == "creating":
                raise _unfinished(name)
            if standing is swtpm.Standing.RUNS:
                orderly = _shut_down(name, paths, record.pid)
            else:
                if standing is swtpm.Standing.CUT_OFF:
                    _kill_cut_off(name, record.pid)
                orderly = record.orderly
            self.registry.update(
                name, state="idle" if idle else "stopped", pid=None, orderly=orderly
            )
            shutil.rmtree(paths.run_dir, ignore_errors=True)

    def delete(self, name: str, force: bool = False) -> None:
        """Remove the vTPM: process, state, sockets and registry entry."""
        if not force:
            self._refuse_if_in_use(name, "delete")
        paths = self.swtpm_paths(name)
        with self._locked(paths.state_dir.name):
            record = self.registry.get(name)
            standing = self._standing(name, record, paths)
            # The state key is derived, never stored: removing the state is all.
            _discard(paths, None if standing is swtpm.Standing.NONE else record.pid)
            self.registry.remove(name)
        log.info("deleted vTPM %s", name)

    def delete_all(self) -> list[str]:
        """Delete every vTPM and pooled vTPM here: the end of a demo's or a
        benchmark's own state tree, whose containers are gone. Goes on past
        a vTPM it cannot delete (logged); returns the names of those."""
        failed = []
        for info in [*self.list(), *self.pooled()]:
            try:
                self.delete(info.name, force=True)
            except NotFoundError:
                continue
            except CvtpmError as exc:
                log.warning("cannot delete vTPM %s: %s", info.name, exc.explain())
                failed.append(info.name)
        return failed

    def discard_unfinished(self, name: str) -> bool:
        """Delete a vTPM whose creation never finished (a crash left it
        "creating"); False if, under its lock, it turns out not to be such.

        Its swtpm is killed only if it still runs on this vTPM's state: after
        a reboot its recorded pid may be another process's.
        """
        paths = self.swtpm_paths(name)
        with self._locked(paths.state_dir.name):
            record = self.registry.get(name)
            if record.state != "creating":
                return False
            _discard(paths, record.pid if swtpm.holds(record.pid, paths) else None)
            self.registry.remove(name)
        log.warning("dropped vTPM %s: its creation never finished", name)
        return True

    def container_using(self, name: str) -> int | None:
        """The pid of a running container the daemon set up with this vTPM, if any."""
        try:
            pid, started = recorded_process(
                self.paths.run / "containers" / name / "container.json"
            )
        except (OSError, ValueError):
            return None
        return pid if is_same_process(pid, started) else None

    def _standing(
        self, name: str, record: VtpmRecord, paths: swtpm.SwtpmPaths
    ) -> swtpm.Standing:
        """Where the vTPM's recorded swtpm stands (swtpm.standing); a
        ConfigError if it runs with another run directory than this
        manager's: it is not cut off, only not where this manager looks."""
        standing = swtpm.standing(record.pid, paths)
        if standing is swtpm.Standing.ELSEWHERE:
            raise ConfigError(
                f"vTPM {name!r} runs (swtpm pid {record.pid}) with its sockets in "
                f"{swtpm.own_run_dir(record.pid)}, not under --run-dir "
                f"{self.paths.run}: give the --run-dir it was started with"
            )
        return standing

    def _refuse_if_in_use(self, name: str, action: str) -> None:
        pid = self.container_using(name)
        if pid is not None:
            raise StateError(
                f"vTPM {name!r} is in use by a running container (pid {pid}); "
                f"stop the container first, or {action} with --force (its "
                "measurements then fail closed)"
            )

    def claim_pooled(self, name: str, ephemeral: bool = False) -> VtpmInfo | None:
        """Give a ready vTPM from the pool to `name`, or None if the pool is empty."""
        check_name(name)
        # A few candidates at a time: a dead one is skipped, a claimed one is
        # another taker's, and the pool may hold thousands.
        while candidates := self.registry.ready_in_pool(limit=8):
            for placeholder, pid, vtpm_uuid in candidates:
                if not swtpm.runs_on(pid, self.uuid_paths(vtpm_uuid)):
                    # The pool's refill restarts it or drops it; not now.
                    continue
                record = self.registry.claim(placeholder, name, ephemeral)
                if record is not None:
                    return self._info(record)
            if all(
                not swtpm.runs_on(pid, self.uuid_paths(vtpm_uuid))
                for _, pid, vtpm_uuid in candidates
            ):
                return None
        return None

    def pooled_count(self) -> int:
        """How many vTPMs wait in the pool."""
        return self.registry.count(pooled=True)

    def pooled(self) -> list[VtpmInfo]:
        """The vTPMs waiting in the pool."""
        return [self._info(record) for record in self.registry.all(pooled=True)]

    def shown(self, info: VtpmInfo) -> VtpmInfo:
        """The vTPM as a user should see it: one recorded running whose swtpm
        died, or was cut off from its run directory, is "down" (`start`, or
        the daemon's supervisor, brings it back)."""
        if info.state != "running" or swtpm.runs_on(
            info.pid, self.uuid_paths(info.uuid)
        ):
            return info
        return replace(info, state="down")

    def is_running(self, name: str) -> bool:
        """True if the vTPM's swtpm process is alive."""
        return self._alive(self.registry.get(name))

    # -- helpers ------------------------------------------------------------------

    def _manufacture(
        self,
        paths: swtpm.SwtpmPaths,
        pid: int,
        record: VtpmRecord,
        banks: list[str] | None,
        ek_types: list[str],
    ) -> dict[str, str]:
        """Start up a just-spawned swtpm and manufacture it; registry fields back."""
        with _first_commands(paths, pid), TpmClient(paths.tcti) as tpm:
            # A new TPM has nothing to resume.
            tpm.startup_clear()
            if banks:
                self._allocate_banks(tpm, paths, banks)
            fields = manufacture(tpm, self.ca, record.uuid, ek_types, record.ak_type)
            tpm.disable_platform_hierarchy()
        return fields

    def _allocate_banks(
        self, tpm: TpmClient, paths: swtpm.SwtpmPaths, banks: list[str]
    ) -> None:
        """TPM2_PCR_Allocate to exactly `banks`, then a power cycle to apply it."""
        if sorted(tpm.active_banks()) == sorted(banks):
            return
        tpm.pcr_allocate(banks)
        ctrl.init(paths.ctrl_socket)
        tpm.startup_clear()

    def _state_key(self, vtpm_uuid: str) -> bytes:
        if self._master_key is None:
            # Only a host without vTPM state may get a new master key.
            may_create = not any(self.paths.vtpms.glob("*/tpm2-*")) and not any(
                self.paths.vtpms.glob("*/quarantine/*/tpm2-*")
            )
            self._master_key = load_or_create_master_key(
                self.paths.master_key, may_create
            )
        return derive_state_key(self._master_key, vtpm_uuid)

    def _paths(self, record: VtpmRecord) -> swtpm.SwtpmPaths:
        return self.uuid_paths(record.uuid)

    def uuid_paths(self, vtpm_uuid: str) -> swtpm.SwtpmPaths:
        """Where the vTPM with this UUID keeps its state and sockets."""
        return vtpm_paths(self.paths, vtpm_uuid)

    def _alive(self, record: VtpmRecord) -> bool:
        """True if the record's pid is a swtpm on this vTPM's own state: after a
        reboot, a recorded pid may be any process's, another vTPM's included."""
        return swtpm.runs_on(record.pid, self._paths(record))

    @contextmanager
    def _locked(self, vtpm_uuid: str) -> Iterator[None]:
        """Hold the vTPM's manager lock, so two managers never act on it at once."""
        directory = self.paths.vtpms / vtpm_uuid
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with exclusive(directory / ".manager.lock"):
            yield

    def _quarantine(self, paths: swtpm.SwtpmPaths) -> Path:
        """Move unreadable state aside, where no swtpm will pick it up again."""
        kept = paths.state_dir / "quarantine" / time.strftime("%Y%m%dT%H%M%S")
        kept.mkdir(mode=0o700, parents=True, exist_ok=True)
        for state_file in paths.state_dir.glob("tpm2-*"):
            state_file.rename(kept / state_file.name)
        return kept

    def _info(self, record: VtpmRecord) -> VtpmInfo:
        paths = self._paths(record)
        ek_certs = record.ek_certs
        return VtpmInfo(
            name=record.name,
            uuid=record.uuid,
            state=record.state,
            pid=record.pid,
            tcti=paths.tcti,
            socket=str(paths.socket),
            banks=record.bank_list,
            ek_handles={t: EK_PROFILES[t].persistent_handle for t in ek_certs},
            ek_certs_pem=ek_certs,
            ak_handle=AK_HANDLES[record.ak_type],
            ak_type=record.ak_type,
            ak_cert_pem=record.ak_cert_pem,
            ca_chain_pem=self.ca.chain_pem.decode(),
            restarts=record.restarts,
            ephemeral=record.ephemeral,
        )


def vtpm_paths(paths: Paths, vtpm_uuid: str) -> swtpm.SwtpmPaths:
    """Where the vTPM with this UUID keeps its state and sockets under `paths`."""
    # Keyed by UUID, not name: a pooled vTPM gets its container's name by a
    # registry update alone, while its swtpm keeps running on the same paths.
    return swtpm.SwtpmPaths(
        state_dir=paths.vtpms / vtpm_uuid, run_dir=paths.run / "vtpm" / vtpm_uuid
    )


def check_run_dir(paths: Paths) -> None:
    """ConfigError if the run directory is too long for any vTPM's sockets:
    a daemon refuses to start rather than fail every vTPM it makes."""
    below = len(str(vtpm_paths(paths, str(uuid.UUID(int=0))).ctrl_socket)) - len(
        str(paths.run)
    )
    room = swtpm.MAX_SOCKET_PATH - below
    if len(str(paths.run)) > room:
        raise ConfigError(
            f"--run-dir {paths.run} is {len(str(paths.run))} bytes long; the "
            f"sockets of vTPMs below it (vtpm/UUID/tpm.sock.ctrl) need it to be "
            f"at most {room} (a unix socket path holds {swtpm.MAX_SOCKET_PATH})"
        )


@contextmanager
def _first_commands(paths: swtpm.SwtpmPaths, pid: int) -> Iterator[None]:
    """The first commands to a swtpm just spawned: if they fail because it
    exited (bad state, state in use, a bad option), raise what it logged."""
    try:
        yield
    except TpmError as exc:
        if exc.from_tpm:
            raise  # the TPM itself answered: swtpm is running
        reason = swtpm.exit_reason(paths, pid)
        if reason is not None:
            raise reason from exc
        raise


def _unfinished(name: str) -> StateError:
    """What start and stop say of a vTPM found "creating" under its lock: its
    maker holds that lock until it is made, so a crash cut this one short."""
    return StateError(
        f"vTPM {name!r} was never finished: what was making it ended first;"
        f" `cvtpm vtpm delete {name}` removes it"
    )


def _shut_down(name: str, paths: swtpm.SwtpmPaths, pid: int) -> bool:
    """Stop a running swtpm in order, so that its next start resumes: True.

    A TPM that refuses TPM2_Shutdown (one in failure mode fails every
    command) can only be killed: False, and its next start begins anew.
    """
    try:
        with TpmClient(paths.tcti) as tpm:
            tpm.shutdown_state()
    except TpmError as exc:
        log.warning(
            "vTPM %s: %s; its swtpm (pid %d) is killed, and its next start"
            " will not resume (its PCRs are lost)",
            name,
            exc,
            pid,
        )
        swtpm.kill(pid)
        return False
    swtpm.stop(paths, pid)
    return True


def _kill_cut_off(name: str, pid: int) -> None:
    """Kill the vTPM's cut-off swtpm (swtpm.standing): it cannot be asked to
    save, and its PCRs, which nothing could reach, are lost."""
    log.warning(
        "vTPM %s: its swtpm (pid %d) was cut off from its run directory;"
        " killed, its PCRs are lost",
        name,
        pid,
    )
    swtpm.kill(pid)


def _end(name: str, paths: swtpm.SwtpmPaths, pid: int, orderly: bool) -> None:
    """Stop a swtpm that failed its start: in order (`_shut_down`) if
    `orderly` (it had resumed), so the next start resumes too; SIGKILL if that
    fails, or otherwise."""
    if orderly:
        with contextlib.suppress(CvtpmError):
            if _shut_down(name, paths, pid):
                return
    swtpm.kill(pid)


def _discard(paths: swtpm.SwtpmPaths, pid: int | None) -> None:
    """Kill a vTPM's swtpm (if `pid`) and remove its state and sockets."""
    swtpm.kill(pid)
    shutil.rmtree(paths.state_dir, ignore_errors=True)
    shutil.rmtree(paths.run_dir, ignore_errors=True)


def _check_choices(what: str, chosen: Iterable[str], allowed) -> list[str]:
    values = [c.strip().lower() for c in chosen if c.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise UsageError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from "
            + ", ".join(allowed)
        )
    return list(dict.fromkeys(values))
