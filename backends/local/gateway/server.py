"""Starting, finding and stopping the one local gateway process of a state folder.

`gateway.json` (pid, port, url) is written only once the gateway answers, and removed
when it stops; a stale file (its pid gone) is ignored and replaced.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from backends.files import write_json
from backends.local.state import LocalState

GATEWAY_FILE = "gateway.json"
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class GatewayInfo:
    url: str
    pid: int
    port: int


def _alive(pid: int) -> bool:
    try:  # reap it if it is our exited child: a zombie still answers kill(pid, 0)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_gateway(state: LocalState) -> GatewayInfo | None:
    """The gateway of this state folder if it is up and answering, else None."""
    path = state.home / GATEWAY_FILE
    try:
        info = GatewayInfo(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None
    if not _alive(info.pid):
        return None
    try:
        httpx.get(f"{info.url}/_local/status", timeout=5).raise_for_status()
    except httpx.HTTPError:
        return None
    return info


def ensure_gateway(state: LocalState, port: int = 0) -> GatewayInfo:
    """Start the gateway unless it is already running; return where it answers."""
    info = running_gateway(state)
    if info:
        return info
    (state.home / GATEWAY_FILE).unlink(missing_ok=True)
    log = open(state.home / "gateway.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "backends.local.gateway.server", "--home", str(state.home), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        cwd=Path(__file__).resolve().parents[3])
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the local gateway exited at start (code {proc.returncode}); see {state.home / 'gateway.log'}")
        info = running_gateway(state)
        if info:
            return info
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"the local gateway did not answer within {START_TIMEOUT_S} s; see {state.home / 'gateway.log'}")


def stop_gateway(state: LocalState, timeout_s: float = 30) -> bool:
    """Stop the gateway (its endpoints' and functions' processes with it). False if none was running."""
    path = state.home / GATEWAY_FILE
    try:
        info = GatewayInfo(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return False
    if not _alive(info.pid):
        path.unlink(missing_ok=True)
        return False
    try:
        httpx.post(f"{info.url}/_local/shutdown", timeout=5)
    except httpx.HTTPError:
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True


def serve(home: str, port: int) -> None:
    import uvicorn

    from backends.local.gateway.app import create_app

    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP;
    # without it every response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    url_holder = {"url": f"http://127.0.0.1:{port}"}
    app, gateway = create_app(home, url_holder)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=75)
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.02)
        gateway_file = Path(home) / GATEWAY_FILE
        write_json(gateway_file, {"url": url_holder["url"], "pid": os.getpid(), "port": port})
        stop = asyncio.create_task(gateway.shutdown_event.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await task
        gateway_file.unlink(missing_ok=True)

    asyncio.run(main())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the sagemaker-flows local gateway")
    parser.add_argument("--home", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    serve(args.home, args.port)
