"""A client of the cvtpm daemon's HTTP API over its unix socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from cvtpm.config import Paths
from cvtpm.errors import ConfigError, NotFoundError, StateError

DAEMON_SOCKET = "daemon.sock"

# Making a vTPM creates an EK and its certificate; swtpm's RSA key generation can
# take several seconds on a busy host.
TIMEOUT = 120.0


def daemon_socket(paths: Paths) -> Path:
    """Where the daemon listens."""
    return paths.run / DAEMON_SOCKET


class DaemonClient:
    """The calls the runtime integration makes to `cvtpm daemon`."""

    def __init__(self, socket_path: Path, *, timeout: float = TIMEOUT):
        self.socket_path = Path(socket_path)
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket_path)),
            base_url="http://cvtpm",
            timeout=timeout,
        )

    @classmethod
    def for_paths(cls, paths: Paths) -> DaemonClient:
        """A client of the daemon serving `paths`."""
        return cls(daemon_socket(paths))

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def create_container(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/containers: make or restore the vTPM and start measuring."""
        return self._request("POST", "/v1/containers", json=body)

    def delete_container(self, name: str) -> bool:
        """DELETE /v1/containers/{name}; False if the daemon did not know it."""
        try:
            self._request("DELETE", f"/v1/containers/{name}")
        except NotFoundError:
            return False
        return True

    def list_containers(self) -> list[dict[str, Any]]:
        """GET /v1/containers."""
        return self._request("GET", "/v1/containers")

    def _request(self, method: str, url: str, **kwargs) -> Any:
        try:
            response = self._http.request(method, url, **kwargs)
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise ConfigError(
                f"cannot reach the cvtpm daemon at {self.socket_path}: {exc}; "
                "is `cvtpm daemon` running?"
            ) from exc
        except httpx.TimeoutException as exc:
            raise StateError(f"the cvtpm daemon did not answer {method} {url}") from exc

        if response.status_code == 404:
            raise NotFoundError(f"{method} {url}: {_detail(response)}")
        if response.status_code >= 400:
            raise StateError(
                f"the cvtpm daemon refused {method} {url} "
                f"({response.status_code}): {_detail(response)}"
            )
        if not response.content:
            return None
        return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)
