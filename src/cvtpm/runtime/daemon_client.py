"""A client of the cvtpm daemon's HTTP API over its unix socket."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cvtpm._defaults import DAEMON_SOCKET
from cvtpm.config import Paths
from cvtpm.errors import ConfigError, NotFoundError, StateError

# Making a vTPM creates an EK and its certificate; swtpm's RSA key generation can
# take several seconds on a busy host.
TIMEOUT = 120.0


def daemon_socket(paths: Paths) -> Path:
    """Where the daemon listens."""
    return paths.run / DAEMON_SOCKET


class _UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket: the standard library's HTTP, our address."""

    def __init__(self, socket_path: Path, timeout: float):
        super().__init__("cvtpm", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DaemonClient:
    """The calls `cvtpm run` and the tests make to `cvtpm daemon`.

    Built on http.client rather than a richer HTTP library: `cvtpm run` is
    started for every container it runs, where import time is start-up time.
    """

    def __init__(self, socket_path: Path, *, timeout: float = TIMEOUT):
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    @classmethod
    def for_paths(cls, paths: Paths) -> DaemonClient:
        """A client of the daemon serving `paths`."""
        return cls(daemon_socket(paths))

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: each request has its own connection."""

    def delete_container(self, name: str) -> bool:
        """DELETE /v1/containers/{name}; False if the daemon did not know it."""
        try:
            self._request("DELETE", f"/v1/containers/{quote(name, safe='')}")
        except NotFoundError:
            return False
        return True

    def health(self) -> dict[str, Any]:
        """GET /v1/health: the daemon's version, containers and pool."""
        return self._request("GET", "/v1/health")

    def list_containers(self) -> list[dict[str, Any]]:
        """GET /v1/containers."""
        return self._request("GET", "/v1/containers")

    def _request(self, method: str, url: str, body: Any = None) -> Any:
        connection = _UnixHTTPConnection(self.socket_path, self.timeout)
        headers = {}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, url, body=payload, headers=headers)
            response = connection.getresponse()
            status, content = response.status, response.read()
        except TimeoutError as exc:
            raise StateError(f"the cvtpm daemon did not answer {method} {url}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ConfigError(
                f"cannot reach the cvtpm daemon at {self.socket_path}: {exc}; "
                "is `cvtpm daemon` running?"
            ) from exc
        finally:
            connection.close()

        if status == 404:
            raise NotFoundError(f"{method} {url}: {_detail(content)}")
        if status >= 400:
            detail = _detail(content)
            raise StateError(
                f"the cvtpm daemon refused {method} {url} ({status}): {detail}"
            )
        if not content:
            return None
        return json.loads(content)


def _detail(content: bytes) -> str:
    """The daemon's explanation of an error answer, as text."""
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode(errors="replace").strip()[:500]
    if isinstance(body, dict):
        return str(body.get("detail", body))
    return str(body)
