"""A running daemon Host for tests, torn down with every vTPM it made."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cvtpm.config import Paths
from cvtpm.errors import NotFoundError
from cvtpm.server.host import Host
from cvtpm.server.request import ContainerRequest


@contextlib.contextmanager
def running_host(paths: Paths, **options) -> Iterator[Host]:
    """A started Host on `paths` (no host TPM); its containers and vTPMs go after."""
    host = Host(paths, host_pcrs=None, **options)
    host.start()
    try:
        yield host
    finally:
        for container in host.containers():
            # One whose exit the host was handling is gone by now.
            with contextlib.suppress(NotFoundError):
                host.remove_container(container["name"])
        host.stop()
        host.pool.drain()
        for info in host.manager.list():
            host.manager.delete(info.name)


def hand_over(host: Host, runc, bundle, name: str, **request) -> tuple[str, int]:
    """`runc create` the bundle and set the container up as its hook would:
    (container id, pid); the container still waits for `runc start`."""
    cid, pid = runc.create(bundle)
    host.add_container(
        ContainerRequest(name=name, pid=pid, rootfs=str(bundle.rootfs), **request)
    )
    return cid, pid


def served_then_left(
    paths: Paths, runc, bundle, name: str, **request
) -> tuple[str, int]:
    """`hand_over` to a daemon that then stops, as one that crashed or was
    restarted would: the container waits for `runc start`, unserved, with
    its record left for the next daemon to find."""
    host = Host(paths, host_pcrs=None)
    host.start()
    try:
        return hand_over(host, runc, bundle, name, **request)
    finally:
        host.stop()
