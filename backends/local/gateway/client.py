"""The client side of the local gateway's control API (/_local/), used by the local backend and the CLI.

GatewayClient speaks the API with the gateway's secret (gateway.json); its errors are those of
backends/errors.py, chosen by the status the gateway answered. GatewayConnection is the gateway of
one state folder as the local services share it: started on first need, reconnected (with the new
secret) when it was restarted, on the same port or another.
"""
from __future__ import annotations

import httpx

from backends.errors import DeploymentFailedError, InvalidRequestError, NotFoundError, ServiceUnavailableError
from backends.local.gateway.guard import bearer

_ERROR_BY_STATUS = {400: InvalidRequestError, 404: NotFoundError, 413: InvalidRequestError,
                    422: DeploymentFailedError}


class GatewayClient:
    def __init__(self, url: str, secret: str, timeout_s: float = 600):
        self.url = url.rstrip("/")
        self.secret = secret
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=bearer(secret))

    @classmethod
    def of(cls, info, timeout_s: float = 600) -> "GatewayClient":
        """A client of a running gateway (server.GatewayInfo)."""
        return cls(info.url, info.secret, timeout_s)

    def _call(self, method: str, path: str, json: dict | None = None) -> dict:
        response = self.http.request(method, path, json=json)
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            error = _ERROR_BY_STATUS.get(response.status_code)
            if error is None:
                error = ServiceUnavailableError if response.status_code >= 500 else InvalidRequestError
            raise error(f"local gateway: {method} {path}: {message}")
        return response.json() if response.content else {}

    def _delete(self, path: str) -> bool:
        """DELETE; False when there was nothing to delete."""
        try:
            self._call("DELETE", path)
        except NotFoundError:
            return False
        return True

    def status(self) -> dict:
        return self._call("GET", "/_local/status")

    def put_endpoint(self, name: str, model_artifact: str, instance_count: int = 1, model_version: str = "",
                     environment: dict[str, str] | None = None, traffic_shift: dict | None = None) -> dict:
        return self._call("PUT", f"/_local/endpoints/{name}", {
            "model_artifact": model_artifact, "instance_count": instance_count,
            "model_version": model_version, "environment": environment or {}, "traffic_shift": traffic_shift})

    def scale_endpoint(self, name: str, instance_count: int) -> dict:
        return self._call("POST", f"/_local/endpoints/{name}/instance-count", {"instance_count": instance_count})

    def set_autoscaling(self, name: str, policy: dict) -> dict:
        """policy: {"min_capacity", "max_capacity", "policy": PutScalingPolicy's arguments, "time_scale": optional}."""
        return self._call("PUT", f"/_local/endpoints/{name}/autoscaling", policy)

    def delete_autoscaling(self, name: str) -> bool:
        return self._delete(f"/_local/endpoints/{name}/autoscaling")

    def delete_endpoint(self, name: str) -> bool:
        return self._delete(f"/_local/endpoints/{name}")

    def put_function(self, name: str, code_dir: str, handler: str = "handler.lambda_handler",
                     environment: dict[str, str] | None = None, memory_mb: int = 512, timeout_s: int = 30,
                     reserved_concurrency: int | None = None, provisioned_concurrency: int = 0) -> dict:
        return self._call("PUT", f"/_local/functions/{name}", {
            "code_dir": code_dir, "handler": handler, "environment": environment or {}, "memory_mb": memory_mb,
            "timeout_s": timeout_s, "reserved_concurrency": reserved_concurrency,
            "provisioned_concurrency": provisioned_concurrency})

    def delete_function(self, name: str) -> bool:
        return self._delete(f"/_local/functions/{name}")

    def close(self) -> None:
        self.http.close()


class GatewayConnection:
    """The gateway of a state folder, shared by the local hosting and functions services."""

    def __init__(self, state):
        self.state = state
        self._client: GatewayClient | None = None

    def running(self) -> bool:
        from backends.local.gateway.server import running_gateway

        return running_gateway(self.state) is not None

    def client(self) -> GatewayClient:
        """A client of the running gateway; the gateway is started first when it is not running."""
        from backends.local.gateway.server import ensure_gateway, running_gateway

        info = running_gateway(self.state)  # gateway.json, read again: a restarted gateway has a new secret
        if info is None:
            info = ensure_gateway(self.state)
        if self._client is None or (self._client.url, self._client.secret) != (info.url, info.secret):
            self.close()
            self._client = GatewayClient.of(info)
        return self._client

    @property
    def url(self) -> str:
        return self.client().url

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
