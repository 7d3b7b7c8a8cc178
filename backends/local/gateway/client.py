"""The local backend's and the CLI's client for the gateway's control API (/_local/)."""
from __future__ import annotations

import httpx


class GatewayError(RuntimeError):
    """The gateway refused a request; the message is the gateway's own."""


class GatewayClient:
    def __init__(self, url: str, timeout_s: float = 600):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def _call(self, method: str, path: str, json: dict | None = None) -> dict | None:
        response = self.http.request(method, path, json=json)
        if response.status_code == 404 and method == "DELETE":
            return None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise GatewayError(f"{method} {path}: {message}")
        return response.json() if response.content else {}

    def status(self) -> dict:
        return self._call("GET", "/_local/status")

    def put_endpoint(self, name: str, model_artifact: str, instance_count: int = 1, model_version: str = "",
                     environment: dict[str, str] | None = None) -> dict:
        return self._call("PUT", f"/_local/endpoints/{name}", {
            "model_artifact": model_artifact, "instance_count": instance_count,
            "model_version": model_version, "environment": environment or {}})

    def scale_endpoint(self, name: str, instance_count: int) -> dict:
        return self._call("POST", f"/_local/endpoints/{name}/instance-count", {"instance_count": instance_count})

    def set_autoscaling(self, name: str, policy: dict | None) -> dict:
        return self._call("PUT" if policy is not None else "DELETE", f"/_local/endpoints/{name}/autoscaling", policy)

    def delete_endpoint(self, name: str) -> bool:
        return self._call("DELETE", f"/_local/endpoints/{name}") is not None

    def put_function(self, name: str, code_dir: str, handler: str = "handler.lambda_handler",
                     environment: dict[str, str] | None = None, memory_mb: int = 512, timeout_s: int = 30,
                     reserved_concurrency: int | None = None, provisioned_concurrency: int = 0) -> dict:
        return self._call("PUT", f"/_local/functions/{name}", {
            "code_dir": code_dir, "handler": handler, "environment": environment or {}, "memory_mb": memory_mb,
            "timeout_s": timeout_s, "reserved_concurrency": reserved_concurrency,
            "provisioned_concurrency": provisioned_concurrency})

    def delete_function(self, name: str) -> bool:
        return self._call("DELETE", f"/_local/functions/{name}") is not None

    def close(self) -> None:
        self.http.close()
