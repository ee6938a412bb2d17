"""The daemon's work, without HTTP: per-container vTPM, measurement and TPM filter.

The HTTP layer (cvtpm.server.daemon) only routes to a Host. A container added
here gets, in order: its vTPM (created, or resumed from its saved state), a
supervisor watch on its swtpm, its measurement list and fanotify marks, and the
filtered TPM socket its processes talk to. With an idle timeout, a container's
vTPM is released while unused and started again on its next use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from dataclasses import asdict, replace
from pathlib import Path

from cvtpm.attest.evidence import collect_evidence
from cvtpm.config import Paths
from cvtpm.errors import CvtpmError, NotFoundError, StateError
from cvtpm.ima.entry import MEASUREMENT_GAP, violation
from cvtpm.ima.policy import DEFAULT_CONTAINER_POLICY, parse_policy
from cvtpm.measure.agent import DEFAULT_BUSY_POLL, Agent
from cvtpm.measure.container import ContainerSpec
from cvtpm.measure.hostpcrs import default_host_pcrs
from cvtpm.measure.journal import BINARY_NAME, MeasurementList, retire_list
from cvtpm.measure.mounts import container_mounts
from cvtpm.pidwatch import (
    PidWatcher,
    is_alive,
    is_same_process,
    process_identity,
)
from cvtpm.runtime.filter_host import FilterHost
from cvtpm.runtime.hook import release_rootfs
from cvtpm.server.request import ContainerRequest, read_record, write_record
from cvtpm.tpm.client import TpmClient
from cvtpm.vtpm import swtpm
from cvtpm.vtpm.idle import IdleReleaser
from cvtpm.vtpm.info import StartReport, VtpmInfo
from cvtpm.vtpm.manager import VtpmManager
from cvtpm.vtpm.pool import VtpmPool
from cvtpm.vtpm.supervisor import Supervisor

log = logging.getLogger(__name__)


class Host:
    """Everything the daemon runs for the containers on this host."""

    def __init__(
        self,
        paths: Paths,
        *,
        host_pcrs=None,
        measure: bool = True,
        pool_size: int = 0,
        fanotify_fd: int | None = None,
        idle_timeout: float = 0,
        busy_poll: float = DEFAULT_BUSY_POLL,
        group_continued: bool = False,
    ):
        self.paths = paths.ensure()
        # True when the fanotify group held the marks of the previous worker
        # (a keeper restarting a crashed worker): nothing went unmeasured.
        self.group_continued = group_continued
        self.manager = VtpmManager(paths)
        self.pool = VtpmPool(self.manager, pool_size)
        self.supervisor = Supervisor(self.manager, on_restart=self._vtpm_restarted)
        self.idle = (
            IdleReleaser(
                self.manager,
                idle_timeout,
                on_start=self._vtpm_woke,
                on_stop=self.supervisor.unwatch,
            )
            if idle_timeout > 0
            else None
        )
        self.filters = FilterHost()
        self.measure = measure
        self.agent = (
            Agent(
                parse_policy(DEFAULT_CONTAINER_POLICY),
                host_pcrs=host_pcrs if host_pcrs is not None else default_host_pcrs(),
                fanotify_fd=fanotify_fd,
                busy_poll=busy_poll,
            )
            if measure
            else None
        )
        self._containers: dict[str, ContainerRequest] = {}
        self._lock = threading.RLock()
        # Containers being torn down, outside the lock (see remove_container);
        # a start of the same name waits on `_left` until its teardown ends.
        self._leaving: dict[str, ContainerRequest] = {}
        self._left = threading.Condition(self._lock)
        self._supervisor_thread: threading.Thread | None = None
        # A container is torn down when its process exits: no poststop hook
        # (a process per container stop) is needed, and none is missed when a
        # runtime dies before running it.
        self._exits = PidWatcher(self._container_exited)

    # -- life of the daemon ----------------------------------------------------

    def start(self) -> None:
        """Start the filter loop, the agent and the supervisor; re-adopt containers."""
        swtpm.become_subreaper()
        self.filters.start()
        self.pool.start()
        self._supervisor_thread = threading.Thread(
            target=self.supervisor.run, name="cvtpm-supervisor", daemon=True
        )
        self._supervisor_thread.start()
        threading.Thread(
            target=self._exits.run, name="cvtpm-container-exits", daemon=True
        ).start()

        # Containers first, events second: an inherited fanotify group holds
        # marks of containers a crashed worker served, and their events must
        # find their container when the agent starts reading.
        self._readopt()
        if self.agent is not None:
            self.agent.start()
        if self.idle is not None:
            self.idle.start()

    def stop(self) -> None:
        """Stop serving; containers keep their vTPM state for the next daemon."""
        if self.idle is not None:
            self.idle.stop()
        for name in list(self._containers):
            self.supervisor.unwatch(name)
        self._exits.stop()
        self.supervisor.stop()
        self.pool.stop()
        for pooled in self.manager.pooled():
            # Stopped in order, they resume at the next daemon's pool.fill().
            self.manager.stop(pooled.name)
        if self.agent is not None:
            self.agent.stop()
        self.filters.stop()

    # -- containers --------------------------------------------------------------

    def add_container(
        self, request: ContainerRequest, readopting: bool = False
    ) -> dict:
        """Give a starting container its vTPM, measurement and TPM socket;
        `readopting`, give them back to a container a previous daemon served."""
        request.validate()
        request.check_container()
        if not readopting or not request.started:
            # A record from before start times were kept gets one now.
            request = replace(request, started=process_identity(request.pid) or "")
        with self._lock:
            self._left.wait_for(lambda: request.name not in self._leaving)
            previous = self._containers.get(request.name)
            if previous is not None and not is_alive(previous.pid):
                # Its exit is not handled yet; a restart must not wait for it.
                self._container_exited(request.name)
            if request.name in self._containers:
                raise StateError(f"container {request.name!r} is already set up")

            # 1. The vTPM: resumed if the container ran before, else from the
            # pool. Its paths are keyed by UUID and never change, so it is
            # looked up once here. An ephemeral container deletes its vTPM and
            # list when it stops, so it may not take a name that has either,
            # unless they are its own (it is being re-adopted).
            had_list = (self.paths.lists / request.name).exists()
            existing = self._vtpm_named(request.name)
            if request.ephemeral and not readopting:
                self._refuse_ephemeral_over(request.name, had_list, existing)
            report, created, info = self._vtpm_up(request, existing)
            self.supervisor.watch(request.name, info.pid)
            if created and had_list:
                # The list of a vTPM that was deleted: its entries were never
                # extended into this one. Kept aside, and a new list begins.
                retired = retire_list(self.paths.lists, request.name)
                had_list = False
                log.warning(
                    "container %s: a new vTPM; the list of the old one is kept in %s",
                    request.name,
                    retired,
                )

            try:
                # 2. Measurement: list, reconcile with PCR 10, fanotify marks.
                if self.agent is not None:
                    self.agent.add_container(self._spec(request, info.tcti, created))

                # 3. The container's TPM: the filtered socket, or kernel
                # devices whose commands the daemon filters the same way.
                exposed = self._expose(request, Path(info.socket))

                # 4. Served from now on, and remembered for a daemon that
                # takes over after this one.
                self._containers[request.name] = request
                self._save(request)
                if self.idle is not None:
                    self.idle.track(request.name)
            except BaseException:
                # A vTPM made for this container holds nothing worth keeping;
                # one that ran before the attempt keeps running. A list from
                # an earlier life of the name is never removed.
                self._containers.pop(request.name, None)
                self._teardown(
                    request,
                    keep=not created,
                    drop_list=not had_list,
                    stop=not report.was_running,
                )
                raise

            if not self._exits.watch(request.name, request.pid):
                self._container_exited(request.name)
                raise StateError(f"container {request.name!r} exited while set up")
            if created and self.agent is not None:
                # Last: beginning the list takes a worker 2 to 5 ms, which
                # would otherwise share the CPUs with the steps above.
                self.agent.begin_soon(request.name)

        log.info("container %s: vTPM %s, measured", request.name, report.describe())
        return {
            "name": request.name,
            **exposed,
            "resumed": report.resumed,
            "lost": report.lost,
            "vtpm": _public(info.to_dict()),
        }

    def remove_container(self, name: str, exited: bool = False) -> dict | None:
        """Tear a stopped container down; keep its vTPM and list unless ephemeral.

        What the hook made in the container's rootfs (the /run/tpm mount
        point) is removed too. With `exited` (the caller saw the container's
        process exit), a container of the name whose process runs is a newer
        one, started meanwhile, and is left alone: None.
        """
        with self._lock:
            # A teardown under way (the container's exit seen first) is waited
            # for, so that whoever asked finds it done; the request was for
            # that container, not for one started under its name since.
            if name in self._leaving:
                self._left.wait_for(lambda: name not in self._leaving)
                raise NotFoundError(f"container {name!r} was torn down already")
            request = self._containers.get(name)
            if request is None:
                raise NotFoundError(f"container {name!r} is not set up on this host")
            if exited and is_alive(request.pid):
                return None
            del self._containers[name]
            self._exits.unwatch(name)
            self._leaving[name] = request

        # Outside the lock: killing a swtpm and removing its files takes
        # milliseconds that other containers' starts need not wait for. Every
        # part torn down is this container's own, and the components shared
        # (agent, filters, registry) guard themselves.
        try:
            self._teardown(request, keep=not request.ephemeral)
            release_rootfs(self.paths, name)
        finally:
            with self._lock:
                del self._leaving[name]
                self._left.notify_all()
        return {"name": name, "vtpm": "deleted" if request.ephemeral else "kept"}

    def _container_exited(self, name: str) -> None:
        """A container's process is gone: tear it down as poststop would."""
        try:
            removed = self.remove_container(name, exited=True)
        except NotFoundError:
            return  # a poststop hook was quicker
        except CvtpmError as exc:
            log.error("tearing down exited container %s: %s", name, exc.explain())
            return
        if removed is not None:
            log.info("container %s exited; torn down", name)

    def containers(self) -> list[dict]:
        """The containers set up now, and those being torn down, as the hook
        described them (`cvtpm run` waits until its container is not listed)."""
        with self._lock:
            requests = [*self._containers.values(), *self._leaving.values()]
            return [asdict(r) for r in requests]

    def evidence(self, name: str, nonce: bytes, since: int = 0) -> dict:
        """A fresh quote of the container's PCR 10, its list from `since`, and certs."""
        info = self.manager.get(name)
        if self.agent is not None:
            self.agent.begin(name)
        with self._using(name):
            if not self.manager.is_running(name):
                raise StateError(f"the vTPM of {name!r} is not running")
            with self.manager.client(name) as tpm:
                evidence = collect_evidence(
                    tpm, info, nonce, self.list_path(name), since
                )
        return evidence.to_json()

    def list_path(self, name: str) -> Path:
        """The container's binary measurement list."""
        return self.paths.lists / name / BINARY_NAME

    # -- steps -------------------------------------------------------------------

    def _vtpm_named(self, name: str) -> VtpmInfo | None:
        """The vTPM of that name, or None if there is none."""
        try:
            return self.manager.get(name)
        except NotFoundError:
            return None

    def _vtpm_up(
        self, request: ContainerRequest, existing: VtpmInfo | None
    ) -> tuple[StartReport, bool, VtpmInfo]:
        """The container's vTPM running; True if it was made just now; its info.

        `existing` is the vTPM of the container's name, if it has one.
        """
        if existing is None:
            info = self.pool.take(request.name, ephemeral=request.ephemeral)
            return StartReport(request.name, info.pid, resumed=False), True, info
        report = self.manager.start(request.name)
        return report, False, self.manager.get(request.name)

    def _using(self, name: str) -> contextlib.AbstractContextManager:
        """The vTPM of `name` held running for a block (see cvtpm.vtpm.idle)."""
        if self.idle is None:
            return contextlib.nullcontext()
        return self.idle.use(name)

    def _expose(self, request: ContainerRequest, upstream: Path) -> dict:
        name = request.name
        lease = None if self.idle is None else lambda: self._using(name)
        if request.expose == "device":
            chip = self.filters.open_device(request.name, upstream, lease=lease)
            return {
                "device": {"tpm": str(chip.tpm), "tpmrm": str(chip.tpmrm)},
                "tcti": f"device:{chip.tpmrm}",
            }
        # The filter's own directory is what gets bind-mounted into the
        # container; container.json, next to it, must stay outside.
        endpoint = self.filters.open(
            request.name,
            upstream,
            self._container_dir(request.name) / "tpm",
            lease=lease,
        )
        return {"filter_socket": str(endpoint.data_path), "tcti": endpoint.tcti}

    def _spec(
        self, request: ContainerRequest, tcti: str, new_vtpm: bool
    ) -> ContainerSpec:
        policy = parse_policy(request.policy) if request.policy else None
        name = request.name
        return ContainerSpec(
            name=name,
            list_dir=self.paths.lists / name,
            extender=(
                (lambda: TpmClient(tcti))
                if self.idle is None
                else (lambda: self.idle.client(name, tcti))
            ),
            pid=request.pid,
            mounts=container_mounts(request.pid, request.rootfs),
            parent=request.parent,
            policy=policy,
            new_vtpm=new_vtpm,
        )

    def _teardown(
        self,
        request: ContainerRequest,
        keep: bool,
        drop_list: bool | None = None,
        stop: bool = True,
    ) -> None:
        """Undo a container's set-up; `keep` its vTPM (stopped) or delete it.

        The list goes with a deleted vTPM unless `drop_list` says otherwise; a
        kept vTPM is left running if not `stop`.
        """
        name = request.name
        if self.idle is not None:
            self.idle.untrack(name)
        self.filters.close(name)
        if self.agent is not None and name in self.agent.containers():
            self.agent.remove_container(name)
        self.supervisor.unwatch(name)
        shutil.rmtree(self._container_dir(name), ignore_errors=True)
        try:
            if keep:
                if stop:
                    self.manager.stop(name, force=True)
            else:
                self.manager.delete(name, force=True)
        except NotFoundError:
            # Deleted by hand while the container ran: nothing of it is left
            # to stop or delete, and a list it leaves follows the rule below.
            log.warning("container %s: its vTPM was deleted already", name)
        if not keep if drop_list is None else drop_list:
            shutil.rmtree(self.paths.lists / name, ignore_errors=True)

    def _refuse_ephemeral_over(
        self, name: str, had_list: bool, existing: VtpmInfo | None
    ) -> None:
        """StateError if an ephemeral container would delete what it did not make."""
        if existing is not None:
            what = "a vTPM"
        elif had_list:
            what = "a measurement list"
        else:
            return
        raise StateError(
            f"{what} named {name!r} exists, and an ephemeral container deletes its"
            " vTPM and list when it stops; run it without ephemeral to continue"
            " it, or under another name"
        )

    def _container_dir(self, name: str) -> Path:
        return self.paths.run / "containers" / name

    def _save(self, request: ContainerRequest) -> None:
        """Remember the container in the run directory, for a restarted daemon."""
        write_record(
            self._container_dir(request.name) / "container.json",
            json.dumps(asdict(request)),
        )

    def _readopt(self) -> None:
        """Take back the containers a previous daemon served that are still alive."""
        for saved in sorted((self.paths.run / "containers").glob("*/container.json")):
            try:
                text, request = read_record(saved)
            except (OSError, ValueError) as exc:
                log.error("cannot re-adopt the container saved in %s: %s", saved, exc)
                continue
            if not is_same_process(request.pid, request.started):
                log.info("container %s ended while no daemon ran", request.name)
                if not request.ephemeral:
                    self._record_gap_unserved(request.name)
                try:
                    # As its exit would have: an ephemeral container's vTPM
                    # and list go, and what its hook made in its rootfs.
                    self._teardown(request, keep=not request.ephemeral)
                    release_rootfs(self.paths, request.name)
                except CvtpmError as exc:
                    log.warning("container %s: %s", request.name, exc.explain())
                continue
            log.warning("re-adopting container %s (pid %d)", request.name, request.pid)
            try:
                self.add_container(request, readopting=True)
                if self.agent is not None and not self.group_continued:
                    # No group held its marks while no daemon ran: what it did
                    # then went unmeasured, and its list says so.
                    self.agent.record_gap(request.name)
                    log.warning(
                        "container %s ran unmeasured while no daemon ran;"
                        " its list records a measurement gap",
                        request.name,
                    )
            except (CvtpmError, OSError) as exc:
                reason = exc.explain() if isinstance(exc, CvtpmError) else str(exc)
                log.error("cannot re-adopt %s: %s", request.name, reason)
                self._record_gap_unserved(request.name)
                # While the container runs, its record stays (a set-up that
                # failed part-way removed it), so the next daemon tries again.
                if is_same_process(request.pid, request.started):
                    try:
                        write_record(saved, text)
                    except OSError as lost:
                        log.error("cannot keep %s: %s", saved, lost)

    def _record_gap_unserved(self, name: str) -> None:
        """Put a measurement gap in the list of a container that ran while no
        daemon served it and that this daemon does not serve either (it ended,
        or could not be taken back), so that the next container of its name
        does not continue the list as if nothing had run. If its vTPM runs
        (a daemon's stop leaves it running), PCR 10 is brought up to the list
        at once, a torn tail set aside first; otherwise the entry reaches PCR
        10 when the list is next reconciled with the vTPM."""
        directory = self.paths.lists / name
        if (
            self.agent is None
            or self.group_continued
            or not (directory / BINARY_NAME).exists()
        ):
            return
        gap = violation(MEASUREMENT_GAP, self.agent.template, self.agent.hash_algorithm)
        try:
            mlist = MeasurementList(directory)
            try:
                running = False
                with contextlib.suppress(NotFoundError):  # its vTPM was deleted
                    running = self.manager.is_running(name)
                if not running:
                    mlist.append(gap)
                else:
                    with self.manager.client(name) as tpm:
                        mlist.reconcile(tpm)
                        mlist.append(gap)
                        mlist.reconcile(tpm)
            finally:
                mlist.close()
        except (CvtpmError, OSError) as exc:
            reason = exc.explain() if isinstance(exc, CvtpmError) else str(exc)
            log.error("cannot record the measurement gap of %s: %s", name, reason)
            return
        log.warning(
            "container %s ran unmeasured while no daemon ran;"
            " its list records a measurement gap",
            name,
        )

    def _vtpm_woke(self, report: StartReport) -> None:
        """A vTPM released for being idle came back: watch its new process."""
        self.supervisor.watch(report.name, report.pid)
        if not report.resumed:
            # Its PCRs were lost; bring PCR 10 up to the list. In a thread of its
            # own: the use that woke it may hold the list's lock.
            threading.Thread(
                target=self._vtpm_restarted, args=(report,), daemon=True
            ).start()

    def _vtpm_restarted(self, report: StartReport) -> None:
        """After swtpm died and came back, bring PCR 10 up to the list at once."""
        if self.agent is not None and report.name in self.agent.containers():
            self.agent.reconcile(report.name)


def _public(info: dict) -> dict:
    """A vTPM description without what only the host should see (none yet)."""
    return {k: v for k, v in info.items() if k not in ("pid",)}
