"""Many containers' filtered TPMs on one asyncio loop, for a daemon that blocks.

The daemon's threads call `open`, `open_device` and `close`; the filters
themselves (cvtpm.runtime.tpm_filter.TpmFilter) run on the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from pathlib import Path
from typing import Any

from cvtpm.errors import StateError
from cvtpm.runtime import tpm_device
from cvtpm.runtime.tpm_commands import FilterPolicy
from cvtpm.runtime.tpm_filter import (
    DATA_SOCKET,
    UPSTREAM_TIMEOUT,
    FilterEndpoint,
    Lease,
    TpmFilter,
)

log = logging.getLogger(__name__)


class FilterHost:
    """Runs the filters of many containers on one event loop in a background thread."""

    def __init__(self, *, timeout: float = UPSTREAM_TIMEOUT):
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._filters: dict[str, TpmFilter] = {}
        self._devices: dict[str, tuple[tpm_device.ProxyChip, Any]] = {}
        self._guard = threading.RLock()

    def start(self) -> FilterHost:
        """Start the loop thread; returns self, so it works as a context manager."""
        if self._thread is not None:
            raise StateError("filter host already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cvtpm-tpm-filters", daemon=True
        )
        self._thread.start()
        return self

    def open(
        self,
        name: str,
        upstream: Path,
        directory: Path,
        policy: FilterPolicy | None = None,
        lease: Lease | None = None,
    ) -> FilterEndpoint:
        """Start filtering the vTPM at `upstream` for container `name`.

        The sockets are `directory/tpm.sock` and `directory/tpm.sock.ctrl`; opening
        a name twice replaces the older filter (a daemon restoring its state).
        """
        with self._guard:
            if name in self._filters:
                self._call(self._filters.pop(name).close())
            tpm_filter = TpmFilter(
                name,
                Path(upstream),
                Path(directory) / DATA_SOCKET,
                policy,
                timeout=self.timeout,
                lease=lease,
            )
            loop = self._running_loop()
            endpoint = tpm_filter.listen()
            # Not waited for (see TpmFilter.listen); close() queues behind it.
            serving = asyncio.run_coroutine_threadsafe(tpm_filter.serve(), loop)
            serving.add_done_callback(functools.partial(_report_serve, name))
            self._filters[name] = tpm_filter
            return endpoint

    def open_device(
        self,
        name: str,
        upstream: Path,
        policy: FilterPolicy | None = None,
        lease: Lease | None = None,
    ) -> tpm_device.ProxyChip:
        """Give container `name` kernel TPM devices, their commands filtered."""
        with self._guard:
            if name in self._filters or name in self._devices:
                raise StateError(f"container {name!r} already has a TPM exposed")
            chip = tpm_device.new_chip()
            relay = TpmFilter(
                name,
                Path(upstream),
                Path("/nonexistent"),
                policy,
                timeout=self.timeout,
                lease=lease,
            )
            task = asyncio.run_coroutine_threadsafe(
                relay.serve_device(chip), self._running_loop()
            )
            self._devices[name] = (chip, task)
        try:
            tpm_device.wait_registered(chip)
        except BaseException:
            self.close(name)
            raise
        return chip

    def close(self, name: str, keep_directory: bool = False) -> None:
        """Stop the filter of container `name`, remove its sockets; no-op if absent.

        With `keep_directory` the sockets' directory stays (see stop()).
        """
        with self._guard:
            tpm_filter = self._filters.pop(name, None)
            if tpm_filter is not None:
                self._call(tpm_filter.close(remove_directory=not keep_directory))
            device = self._devices.pop(name, None)
        if device is not None:
            chip, task = device
            task.cancel()
            with contextlib.suppress(BaseException):
                task.result(timeout=10)
            # Closing the server end makes the kernel remove the chip.
            os.close(chip.fd)

    def get(self, name: str) -> TpmFilter | None:
        """The running filter of container `name`, if any."""
        with self._guard:
            return self._filters.get(name)

    def names(self) -> list[str]:
        """The containers whose filters are running."""
        with self._guard:
            return sorted(self._filters)

    def stop(self) -> None:
        """Close every filter and end the loop thread.

        The directories stay: each is bind-mounted into a container that may
        outlive the daemon, and the next daemon's filter makes its sockets
        in the same directory, which the container's mount still shows.
        """
        if self._loop is None:
            return
        for name in self.names():
            self.close(name, keep_directory=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> FilterHost:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise StateError("filter host is not running; call start() first")
        return self._loop

    def _call(self, coroutine):
        try:
            loop = self._running_loop()
        except StateError:
            coroutine.close()
            raise
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


def _report_serve(name: str, serving) -> None:
    """Log a filter that could not start serving (FilterHost.open does not wait)."""
    failure = None if serving.cancelled() else serving.exception()
    if failure is not None:
        log.error("filter %s: serving its sockets: %s", name, failure)
