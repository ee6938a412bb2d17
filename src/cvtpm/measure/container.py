"""A container as the agent tracks it: its list, its vTPM, its cache and flags."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvtpm.errors import TpmError
from cvtpm.ima.entry import Entry
from cvtpm.measure import procinfo
from cvtpm.measure.eventfile import EventFile
from cvtpm.measure.journal import Extender, MeasurementList, extend

log = logging.getLogger(__name__)


@dataclass
class ContainerSpec:
    """What the agent needs to measure one container.

    `extender` is a TPM client (anything with active_banks, pcr_read and
    pcr_extend, e.g. cvtpm.tpm.client.TpmClient) or a zero-argument callable
    that opens one; with a callable the agent reconnects after a TPM failure
    (an swtpm restart), and closes what it opened.  `mnt_ns` defaults to that
    of `pid`; `mounts` (the paths whose mounts are marked) to /proc/PID/root.
    `new_vtpm` says the vTPM was made for this container: its PCRs are zero
    and its list is new, so nothing can disagree, and the agent leaves the
    list to begin later: on Agent.begin_soon, at the container's first
    measured access, or for evidence (Agent.begin), whichever comes first.
    """

    name: str
    list_dir: Path
    extender: Extender | Callable[[], Extender]
    pid: int | None = None
    mnt_ns: int | None = None
    mounts: Sequence[str] = ()
    parent: str | None = None
    policy: Any = None
    filesystem_mark: bool = False
    new_vtpm: bool = False

    def resolved_mnt_ns(self) -> int:
        """The mount namespace inode that identifies this container's processes."""
        if self.mnt_ns is not None:
            return self.mnt_ns
        if self.pid is None:
            raise ValueError(f"container {self.name!r} needs a pid or a mnt_ns")
        return procinfo.mnt_ns_of(self.pid)

    def resolved_mounts(self) -> list[str]:
        """The paths to mark: as given, else the root of the container's init."""
        if self.mounts:
            return [os.fspath(m) for m in self.mounts]
        if self.pid is None:
            raise ValueError(f"container {self.name!r} needs a pid or mounts")
        return [f"/proc/{self.pid}/root"]


@dataclass(eq=False)
class Container:
    """Run-time state of one measured container."""

    spec: ContainerSpec
    mnt_ns: int
    policy: Any
    mlist: MeasurementList
    # The first entry of a new list (ima_add_boot_aggregate).
    boot_aggregate: Entry
    parent: Container | None = None
    # (st_dev, st_ino) -> (st_ctime_ns, st_mtime_ns) when measured: the
    # kernel's iint "measured" flag with its i_version (ima_main.c).
    measured: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    # Inodes whose open_writers violation was logged and no reader has since
    # seen them free of writers (IMA_EMITTED_OPENWRITERS).
    emitted_open_writers: set[tuple[int, int]] = field(default_factory=set)
    closed: bool = False
    _tpm: Extender | None = None
    _banks: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The container's name, which is also its list's name."""
        return self.spec.name

    def chain(self) -> list[Container]:
        """This container, then its parent, grandparent... up to the root one."""
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def decide(self, file: EventFile, func, mask: int, task: procinfo.Task):
        """This container's IMA policy on an access (a Decision)."""
        # The ids and the filesystem are read only if a rule asks for them.
        return self.policy.should_measure(
            func=func,
            mask=mask,
            uid=lambda: task.uid,
            euid=lambda: task.euid,
            fowner=file.st.st_uid,
            fsmagic=file.fsmagic,
        )

    def begin(self) -> Extender:
        """The connected vTPM, and a new list begun with boot_aggregate.

        Call with mlist.lock held.  Every record() begins the list first, so
        boot_aggregate is the first entry whoever gets there first: the
        agent's start of the container, or its first measured access.
        """
        tpm = self.tpm()
        if not self.mlist.entries:
            self._append(tpm, self.boot_aggregate)
        return tpm

    def record(self, entry: Entry) -> None:
        """Journal the entry, then extend it into the vTPM (call with mlist.lock held).

        Raises on any failure; the caller then denies the access.  Once the
        journal may hold the entry, a failure also drops the connection: the
        PCR may be behind the list, and only the reconcile of the next
        connection (tpm()) brings them back in step.
        """
        self._append(self.begin(), entry)

    def _append(self, tpm: Extender, entry: Entry) -> None:
        try:
            self.mlist.append(entry)
            extend(tpm, entry, self._banks, self.mlist.pcr)
        except BaseException as exc:
            self.drop_tpm()
            journaled = bool(self.mlist.entries) and self.mlist.entries[-1] is entry
            if not journaled or not isinstance(exc, Exception):
                raise
            log.error(
                "%s: entry %d (%r) is journaled but not in PCR %d (%s); the vTPM "
                "is reconnected and reconciled before the next entry",
                self.name,
                len(self.mlist.entries) - 1,
                entry.path,
                self.mlist.pcr,
                exc,
            )
            raise TpmError(
                f"extending PCR {self.mlist.pcr} of {self.name}: {exc}"
            ) from exc

    def tpm(self) -> Extender:
        """The connected vTPM, reconciled with the list; connects if needed."""
        if self._tpm is not None:
            return self._tpm
        extender = self.spec.extender
        tpm = extender if hasattr(extender, "pcr_extend") else extender()
        try:
            self._banks = list(tpm.active_banks())
            self.mlist.reconcile(tpm, self._banks)
        except Exception:
            self._close(tpm)
            raise
        self._tpm = tpm
        return tpm

    def drop_tpm(self) -> None:
        """Forget the connection after a failure; the next use reconnects."""
        if self._tpm is not None:
            self._close(self._tpm)
        self._tpm = None

    def close(self) -> None:
        """Release the list files and any TPM connection the agent opened."""
        self.closed = True
        self.drop_tpm()
        self.mlist.close()

    def _close(self, tpm: Extender) -> None:
        # Only connections the agent opened itself (through a factory) are its own.
        if tpm is not self.spec.extender:
            with contextlib.suppress(Exception):
                tpm.close()
