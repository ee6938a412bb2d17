"""The measurement agent: fanotify permission events -> hash -> list -> PCR -> allow.

Every exec (FAN_OPEN_EXEC_PERM, the kernel's BPRM_CHECK) and open
(FAN_OPEN_PERM, FILE_CHECK) on a marked container mount blocks until the
agent answers.  The agent finds the container from the thread that caused the
event (its mount namespace), asks that container's IMA policy, hashes the file
through the event's fd, journals the entry, extends it into the container's
vTPM PCR 10 (and each ancestor's, by the ancestor's policy), and only then
allows the access.  When it cannot record, it denies: fail closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cvtpm.errors import StateError
from cvtpm.ima import entry as ima_entry
from cvtpm.ima.policy import Func
from cvtpm.measure import fanotify, procinfo
from cvtpm.measure.container import Container, ContainerSpec
from cvtpm.measure.eventfile import EventFile
from cvtpm.measure.execcache import ExecCache, exec_opens_unmeasured
from cvtpm.measure.hashing import DigestCache
from cvtpm.measure.journal import MeasurementList
from cvtpm.measure.violations import ReadWriteViolations

log = logging.getLogger(__name__)

MARK_MASK = fanotify.FAN_OPEN_EXEC_PERM | fanotify.FAN_OPEN_PERM
# Execs allowed whose own open has not been seen yet; more means a leak.
_MAX_PENDING_EXECS = 4096
# Seconds the reader keeps polling after an event before it sleeps (see run).
DEFAULT_BUSY_POLL = 0.0


class Agent:
    """Measures the files that containers execute or open, per their IMA policy.

    `policy` is the default cvtpm.ima.policy.ImaPolicy (a ContainerSpec may
    carry its own).  `fanotify_fd` adopts a group created elsewhere (see
    fanotify.init_group) so that it, and its marks, outlive a crash of the
    agent: pending accesses then wait for the next agent instead of being let
    through.  `host_pcrs` is what boot_aggregate is computed from (None: zeros).
    `busy_poll` is how long, in seconds, the reader polls for the next event
    before it sleeps (0: never polls; see run).
    """

    def __init__(
        self,
        policy,
        *,
        fanotify_fd: int | None = None,
        workers: int = 4,
        host_pcrs: dict[str, dict[int, bytes]] | None = None,
        hash_algorithm: str = "sha256",
        template: str = "ima-ng",
        busy_poll: float = DEFAULT_BUSY_POLL,
    ):
        self.policy = policy
        self.busy_poll = busy_poll
        self.hash_algorithm = hash_algorithm
        self.template = template
        self.host_pcrs = host_pcrs
        self._containers: dict[str, Container] = {}
        self._by_ns: dict[int, Container] = {}
        self._violations = ReadWriteViolations()
        # pid -> (file key, task) of an exec just allowed, whose own open is
        # the pid's next event (see _triage).
        self._exec_opens: dict[int, tuple[tuple[int, int], procinfo.Task]] = {}
        # File versions hashed for any container (the kernel's iint hash).
        self._digests = DigestCache()
        # Execs that record nothing, answered as they are read.
        self._exec_cache = ExecCache()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cvtpm-measure")
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

        # 1. The fanotify group: our own, or adopted from a holder that
        # survived the previous agent.
        self._owns_group = fanotify_fd is None
        self.group = fanotify.init_group() if fanotify_fd is None else fanotify_fd
        os.set_blocking(self.group, False)

        # 2. An adopted group may hold events a dead agent read but never
        # answered; deny them before reading anything new (fail closed).
        if not self._owns_group:
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            denied = fanotify.deny_orphans(self.group, limit)
            if denied:
                log.warning(
                    "denied %d accesses left pending by a previous agent", denied
                )

    # -- containers ---------------------------------------------------------

    def add_container(self, spec: ContainerSpec) -> MeasurementList:
        """Start measuring a container: open its list, reconcile its vTPM, mark it.

        For a spec with new_vtpm the list is begun (the vTPM connected,
        boot_aggregate recorded) later: by a worker once the caller says
        `begin_soon`, or by the first measured access, whichever comes first.
        That is 2 to 5 ms that the runtime's hook does not wait for, nor
        share two cores with.  Raises StateError when the list and the vTPM
        disagree (see MeasurementList.reconcile), OSError when the mount
        cannot be marked.
        """
        with self._lock:
            if spec.name in self._containers:
                raise StateError(f"container {spec.name!r} is already measured")
            parent = None
            if spec.parent is not None:
                parent = self._containers.get(spec.parent)
                if parent is None:
                    raise StateError(f"parent container {spec.parent!r} is not known")

        # 1. The list, its vTPM brought up to it, and boot_aggregate first.
        # Reconcile comes before any append: it decides what a torn tail is.
        mlist = MeasurementList(spec.list_dir)
        container = Container(
            spec=spec,
            mnt_ns=spec.resolved_mnt_ns(),
            policy=spec.policy if spec.policy is not None else self.policy,
            mlist=mlist,
            boot_aggregate=ima_entry.boot_aggregate(
                self.host_pcrs, self.template, self.hash_algorithm
            ),
            parent=parent,
        )
        try:
            # A new vTPM and a new list cannot disagree, so nothing here can
            # refuse the container: they are begun later (begin_soon).
            if not spec.new_vtpm:
                with mlist.lock:
                    container.begin()

            # 2. Known before marked: an event that arrives as soon as the mark
            # is placed must find its container, or it would pass unmeasured.
            with self._lock:
                self._containers[spec.name] = container
                self._by_ns[container.mnt_ns] = container
                self._exec_cache.forget(container.mnt_ns)

            # 3. The marks: every exec and open on the container's mounts.
            for path in spec.resolved_mounts():
                fanotify.mark(
                    self.group, path, MARK_MASK, filesystem=spec.filesystem_mark
                )
        except BaseException:
            with self._lock:
                if self._containers.get(spec.name) is container:
                    del self._containers[spec.name]
                if self._by_ns.get(container.mnt_ns) is container:
                    del self._by_ns[container.mnt_ns]
                    self._exec_cache.forget(container.mnt_ns)
            with mlist.lock:
                container.close()
            raise

        log.info("measuring container %s (mnt ns %d)", spec.name, container.mnt_ns)
        return mlist

    def begin(self, name: str) -> None:
        """Begin a container's list now if no worker has yet (see add_container).

        For readers of the list, such as evidence for a verifier, that must
        not find a measured container's list empty.  A container not measured
        is left alone; a failure raises, as a measured access would be denied.
        """
        try:
            container = self._measured(name)
        except StateError:
            return
        self._begin(container)

    def begin_soon(self, name: str) -> None:
        """Have a worker begin a container's list (see add_container): for
        the caller to say once the container's set-up no longer needs the CPU.

        Never raises: the list begins at the first measured access anyway.
        """
        try:
            container = self._measured(name)
            self._pool.submit(self._begin_later, container)
        except (StateError, RuntimeError) as exc:
            # Not measured, or the agent is stopping (no new work for its pool).
            log.debug("%s: its list begins at its first measured access: %s", name, exc)

    def _begin_later(self, container: Container) -> None:
        """Begin a new container's list in a worker (see add_container)."""
        try:
            self._begin(container)
        except Exception as exc:
            # Nothing measured is lost: the first measured access begins
            # the list itself, or is denied.
            log.warning(
                "%s: beginning its list: %s; its first measured access tries again",
                container.name,
                exc,
            )

    @staticmethod
    def _begin(container: Container) -> None:
        with container.mlist.lock:
            if not container.closed:
                container.begin()

    def remove_container(self, name: str) -> None:
        """Stop measuring a container; its list stays on disk."""
        with self._lock:
            container = self._containers.pop(name)
            if self._by_ns.get(container.mnt_ns) is container:
                del self._by_ns[container.mnt_ns]
                self._exec_cache.forget(container.mnt_ns)
        self._violations.forget(container)

        # The marks vanish with the mount when the container is gone; remove
        # them only while the mount is still there.
        with contextlib.suppress(OSError, ValueError):
            for path in container.spec.resolved_mounts():
                fanotify.unmark(
                    self.group,
                    path,
                    MARK_MASK,
                    filesystem=container.spec.filesystem_mark,
                )
        with container.mlist.lock:
            container.close()

    def reconcile(self, name: str) -> None:
        """Reconnect to a container's vTPM and bring its PCR up to the list.

        For a vTPM that restarted (its PCRs were reset): without this, the
        replay would wait for the container's next measured access.
        """
        container = self._measured(name)
        with container.mlist.lock:
            container.drop_tpm()
            container.tpm()

    def record_gap(self, name: str) -> None:
        """Log a measurement gap in a container's list (see MEASUREMENT_GAP)."""
        container = self._measured(name)
        gap = ima_entry.violation(
            ima_entry.MEASUREMENT_GAP, self.template, self.hash_algorithm
        )
        with container.mlist.lock:
            container.record(gap)

    def _measured(self, name: str) -> Container:
        with self._lock:
            container = self._containers.get(name)
        if container is None:
            raise StateError(f"container {name!r} is not measured")
        return container

    def containers(self) -> list[str]:
        """Names of the containers being measured."""
        with self._lock:
            return list(self._containers)

    # -- the event loop -----------------------------------------------------

    def start(self) -> None:
        """Run the event loop in a background thread."""
        self._thread = threading.Thread(
            target=self.run, name="cvtpm-fanotify", daemon=True
        )
        self._thread.start()

    def run(self) -> None:
        """Read events and answer or hand each to a worker until stop() is called.

        The reader (ExecCache.serve) answers execs the agent has judged before
        and hands the rest to _dispatch.  With `busy_poll` it keeps polling
        that long after an event instead of sleeping, yielding the CPU to
        anything runnable.  By default it sleeps at once: on 2 cores a cached
        exec took 35-50 us more than without the agent when sleeping, 55-80
        us when polling for 2 ms, and more when polling for less (the poller
        takes the CPU the woken process needs); a host with cores to spare
        may differ.
        """
        while not self._stopping.is_set():
            self._exec_cache.serve(
                self.group, self._wake_r, self.busy_poll, self._dispatch_all
            )

    def _dispatch_all(self, events: list[fanotify.Event]) -> None:
        for event in events:
            if event.fd < 0:
                log.error("fanotify queue overflow (mask 0x%x)", event.mask)
            elif not event.is_permission:
                os.close(event.fd)
            else:
                self._dispatch(event)

    def stop(self) -> None:
        """Stop the loop, finish events in flight, close lists and an own group.

        Closing a group allows every access still queued in it (fanotify_release
        in fs/notify/fanotify/fanotify_user.c), so stop the agent only once its
        containers are gone, or hand the group to a holder first.
        """
        self._stopping.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join()
        self._pool.shutdown(wait=True)

        # Marks stay: an adopted group keeps measuring for the next agent.
        with self._lock:
            containers = list(self._containers.values())
            self._containers.clear()
            self._by_ns.clear()
            self._exec_cache.clear()
        for container in containers:
            with container.mlist.lock:
                container.close()
        if self._owns_group:
            os.close(self.group)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- one event ----------------------------------------------------------

    def _dispatch(self, event: fanotify.Event) -> None:
        """Answer an event that needs nothing recorded at once; queue the rest.

        Most events are a cached exec or an open no rule measures: deciding
        that takes a stat and a policy lookup, while a hand-off to a worker
        thread would cost more than the decision.  Hashing, journaling and
        extending happen in the workers, so one slow file never holds up the
        reading of other events.
        """
        try:
            work = self._triage(event)
        except Exception as exc:
            # Fail closed: an access the agent cannot judge does not happen.
            log.error("denying access by pid %d: %s", event.pid, exc)
            self._answer(event, allow=False)
            return
        if work is None or not (work.records or work.tomtou):
            self._answer(event, allow=True, work=work)
        else:
            self._pool.submit(self._handle, event, work)

    def _handle(self, event: fanotify.Event, work: _Work) -> None:
        allow = False
        try:
            self._carry_out(work)
            allow = True
        except Exception as exc:
            # Fail closed: an access the agent cannot record does not happen.
            log.error("denying access by pid %d: %s", event.pid, exc)
        finally:
            self._answer(event, allow, work)

    def _answer(
        self, event: fanotify.Event, allow: bool, work: _Work | None = None
    ) -> None:
        if allow and work is not None and work.func == Func.BPRM_CHECK:
            # Set before the answer: the exec's open is the pid's next event.
            if len(self._exec_opens) > _MAX_PENDING_EXECS:
                self._exec_opens.clear()
            self._exec_opens[event.pid] = (work.file.key, work.task)
        try:
            fanotify.respond(self.group, event.fd, allow)
        except OSError as exc:
            log.error("answering fanotify event of pid %d: %s", event.pid, exc)
        os.close(event.fd)

    def _triage(self, event: fanotify.Event) -> _Work | None:
        """What the access needs recorded; None if it is outside measured containers.

        A _Work with no records and no ToMToU readers needs nothing done.
        """
        # 1. What: a regular file (IMA measures nothing else).
        st = os.fstat(event.fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        file = EventFile(event.fd, st, self._digests)

        # 2. How: exec (BPRM_CHECK) or open (FILE_CHECK) with the open's mask.
        # An allowed exec opens its file next (fs/exec.c, do_open_execat),
        # which the kernel's IMA sees as FILE_CHECK with MAY_EXEC: that is the
        # thread's next event, so neither thread nor mask is read again.
        exec_open = self._exec_opens.pop(event.pid, None)
        if event.mask & fanotify.FAN_OPEN_EXEC_PERM:
            task = procinfo.task(event.pid)
            func, mask = Func.BPRM_CHECK, procinfo.MAY_EXEC
        elif exec_open is not None and exec_open[0] == file.key:
            task = exec_open[1]
            func, mask = Func.FILE_CHECK, procinfo.MAY_EXEC
        else:
            task = procinfo.task(event.pid)
            # TODO: opens whose flags /proc cannot show (io_uring, kernel-made
            # opens) are taken as reads; a write made that way escapes ToMToU.
            func = Func.FILE_CHECK
            mask = procinfo.open_mask(task.tid) or procinfo.MAY_READ

        # 3. Who: the container of the thread, by mount namespace.
        container = self._container_of(task)
        readers_of = self._violations.readers_of(file.key)
        if container is None and not readers_of:
            return None

        # 4. ToMToU goes to every list that measured the file for a reader,
        # whoever the writer is (the kernel's iint is per inode, not per task).
        writing = func == Func.FILE_CHECK and mask & procinfo.MAY_WRITE
        tomtou = readers_of if writing else set()

        # 5. The container's list, then each ancestor's, each by its own policy.
        # A BPRM_CHECK of a file measured at this version records nothing: the
        # kernel checks violations for FILE_CHECK only (ima_main.c,
        # process_measurement).
        records = []
        chain = container.chain() if container is not None else []
        measured = 0
        for node in chain:
            # Asked first: it is a dict lookup, and a cached exec is most events.
            if func == Func.BPRM_CHECK and node.measured.get(file.key) == file.version:
                measured += 1
                continue
            decision = node.decide(file, func, mask, task)
            if decision.measure:
                records.append((node, decision))
        if chain and measured == len(chain):
            self._cache_exec(chain, task, file)

        return _Work(file, func, mask, task, records, tomtou)

    def _cache_exec(self, chain: list[Container], task: procinfo.Task, file) -> None:
        """Have the exec's twins answered as they are read (see execcache)."""
        if not exec_opens_unmeasured(chain):
            return
        with self._lock:
            # The container's own namespace only (threads of a nested one are
            # traced each time), and only while it is measured: a forgotten
            # namespace's number may come back as another container's.
            if self._by_ns.get(task.mnt_ns) is chain[0]:
                self._exec_cache.add(task.mnt_ns, file)

    def _carry_out(self, work: _Work) -> None:
        """Record violations and measurements; raises if any cannot be recorded."""
        if work.tomtou:
            self._check_tomtou(work.file, work.tomtou)
        for node, decision in work.records:
            self._record(node, work.file, work.func, work.mask, decision)

    def _check_tomtou(self, file: EventFile, flagged: set[Container]) -> None:
        """Log ToMToU where a measured reader still has the file open."""
        if not self._violations.tomtou(file):
            return
        for c in flagged:
            with c.mlist.lock:
                log.warning("%s: ToMToU violation on %r", c.name, file.path())
                c.record(
                    ima_entry.violation(file.path(), self.template, self.hash_algorithm)
                )

    def _record(self, c: Container, file: EventFile, func, mask: int, decision) -> None:
        """Measure the file into one list as the policy `decision` said to."""
        # TODO: a rule's `pcr=` is ignored; every entry goes to PCR 10, the only
        # PCR the journal reconciles.  It matters once policies use pcr=.
        template = decision.template or self.template

        key, version = file.key, file.version
        if c.measured.get(key) != version:
            file.digest(self.hash_algorithm)  # outside the lock: hashing is slow

        with c.mlist.lock:
            # ima_main.c process_measurement: violations are checked for
            # FILE_CHECK, before the measurement; write opens were handled above.
            reading = func == Func.FILE_CHECK and not mask & procinfo.MAY_WRITE
            if reading and self._violations.open_writers(c, file):
                log.warning("%s: open_writers violation on %r", c.name, file.path())
                c.record(
                    ima_entry.violation(file.path(), template, self.hash_algorithm)
                )
            if c.measured.get(key) != version:
                c.record(file.entry(template, self.hash_algorithm))
                c.measured[key] = version

    def _container_of(self, task: procinfo.Task) -> Container | None:
        """The container whose mount namespace the thread is in, or descends from.

        A process that made its own mount namespace inside a container is
        still that container's: its parent chain is followed to a known one.
        Host processes (the runtime, an admin reading the rootfs through
        /proc/PID/root) belong to none.
        """
        with self._lock:
            found = self._by_ns.get(task.mnt_ns)
            if found is not None:
                return found
            by_ns = dict(self._by_ns)
        ancestor = procinfo.nearest_ancestor_in(task, by_ns.keys())
        return None if ancestor is None else by_ns[ancestor.mnt_ns]


@dataclass
class _Work:
    """What one access needs done before it is allowed."""

    file: EventFile
    func: Func
    mask: int
    task: procinfo.Task
    # The lists whose policy measures it, with the rule's decision.
    records: list[tuple[Container, Any]]
    # The lists that measured the file for a reader, when this is a write.
    tomtou: set[Container]
