"""The Prefect server and deployments a user can look at, on this machine.

Unless PREFECT_API_URL names a server, the CLI starts (or finds again) one long-lived Prefect server
bound to 127.0.0.1, its database under the state folder (<home>/prefect), so runs, artifacts and
deployments outlive the command that made them. `ensure_runner` keeps the pipeline's deployments
served in the background (`sagemaker-flows serve`), so pressing Run in the UI works at once.
`sagemaker-flows local down` stops both with the gateway.

    <home>/prefect-server.json  {"pid", "url", "port"}   <home>/prefect-server.log
    <home>/prefect-runner.json  {"pid", "api_url", "config"}   <home>/prefect-runner.log
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from filelock import FileLock

from backends.files import write_json
from backends.local.processes import alive, read_record, start_detached, stop_process, wait_until_up
from backends.local.state import LocalState

SERVER_FILE, RUNNER_FILE = "prefect-server.json", "prefect-runner.json"
SERVER_START_TIMEOUT_S = 180  # the first start creates the database
RUNNER_START_TIMEOUT_S = 120
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PrefectServer:
    url: str  # the UI; the API is under /api
    pid: int
    started: bool = False  # by this call

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def _healthy(url: str, timeout_s: float = 5) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def running_server(state: LocalState) -> PrefectServer | None:
    record = read_record(state.home / SERVER_FILE)
    if record is None or not alive(record["pid"]) or not _healthy(record["url"]):
        return None
    return PrefectServer(record["url"], record["pid"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prefect_environment(state: LocalState, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # The UI asks this for its API (without it, port 4200 whatever the server's own).
    env.update(PREFECT_HOME=str(state.home / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_API_URL=f"{url}/api",
               # A web page open in the browser must not start flow runs here: only the server's own
               # origin (its UI) may call the API across origins, and changes need a CSRF token, which
               # Prefect's UI and clients fetch and a cross-site page cannot read.
               PREFECT_SERVER_CORS_ALLOWED_ORIGINS=url, PREFECT_SERVER_CSRF_PROTECTION_ENABLED="true")
    return env


def ensure_server(state: LocalState) -> PrefectServer:
    """The local Prefect server of this state folder, started when it is not running."""
    with FileLock(state.home / "prefect-server.lock", timeout=SERVER_START_TIMEOUT_S + 30):
        found = running_server(state)
        if found:
            return found
        record = read_record(state.home / SERVER_FILE)
        if record and alive(record["pid"]):  # up but not answering: a stuck server is replaced
            stop_process(record["pid"], grace_s=10)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = state.home / "prefect-server.log"
        proc = start_detached([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port), "--analytics-off"], log, cwd=state.home,
                              env=_prefect_environment(state, url))
        wait_until_up(lambda: True if _healthy(url) else None, proc, "the local Prefect server", log,
                      SERVER_START_TIMEOUT_S)
        write_json(state.home / SERVER_FILE, {"pid": proc.pid, "url": url, "port": port})
        return PrefectServer(url, proc.pid, started=True)


def _stop(state: LocalState, record_file: str) -> bool:
    """Stop the process a record names; False when none was running."""
    record = read_record(state.home / record_file)
    (state.home / record_file).unlink(missing_ok=True)
    if record is None or not alive(record["pid"]):
        return False
    stop_process(record["pid"], grace_s=20)
    return True


def stop_server(state: LocalState) -> bool:
    return _stop(state, SERVER_FILE)


def running_runner(state: LocalState) -> dict | None:
    record = read_record(state.home / RUNNER_FILE)
    return record if record and alive(record["pid"]) else None


def ensure_runner(state: LocalState, api_url: str, config_file: Path) -> dict:
    """`sagemaker-flows serve --config <config_file>` in the background against `api_url`; one that
    serves another configuration or server is replaced."""
    with FileLock(state.home / "prefect-runner.lock", timeout=RUNNER_START_TIMEOUT_S + 30):
        wanted = {"api_url": api_url, "config": str(config_file), "config_text": config_file.read_text()}
        record = running_runner(state)
        if record and all(record.get(k) == v for k, v in wanted.items()):
            return record
        if record:
            stop_process(record["pid"], grace_s=20)
        env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "SAGEMAKER_FLOWS_HOME": str(state.home)}
        log, ready = state.home / "prefect-runner.log", state.home / "prefect-runner.ready"
        ready.unlink(missing_ok=True)
        proc = start_detached([sys.executable, "-m", "flows.cli", "serve", "--config", str(config_file),
                               "--ready-file", str(ready)], log, cwd=PROJECT_ROOT,
                              env=env)
        wait_until_up(lambda: True if ready.exists() else None, proc, "the deployments runner", log,
                      RUNNER_START_TIMEOUT_S)
        record = {"pid": proc.pid, **wanted}
        write_json(state.home / RUNNER_FILE, record)
        return record


def stop_runner(state: LocalState) -> bool:
    return _stop(state, RUNNER_FILE)
