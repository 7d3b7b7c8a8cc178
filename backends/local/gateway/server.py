"""Starting, finding and stopping the one local gateway process of a state folder.

`gateway.json` (pid, port, url) is written by the gateway once it listens, and removed when it
stops; a stale file (its pid gone) is ignored and replaced. Starting takes a cross-process lock
(filelock), so two flows starting at once end up with one gateway; one that is slow to answer
is waited for, not mistaken for a dead one and started again.
"""
from __future__ import annotations

import argparse
import asyncio
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

GATEWAY_FILE = "gateway.json"
START_TIMEOUT_S = 60
PROJECT_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class GatewayInfo:
    url: str
    pid: int
    port: int


def _recorded(state: LocalState) -> GatewayInfo | None:
    record = read_record(state.home / GATEWAY_FILE)
    try:
        return GatewayInfo(**record) if record else None
    except TypeError:
        return None


def running_gateway(state: LocalState, timeout_s: float = 5) -> GatewayInfo | None:
    """The gateway of this state folder if it is up and answering, else None."""
    info = _recorded(state)
    if info is None or not alive(info.pid):
        return None
    try:
        httpx.get(f"{info.url}/_local/status", timeout=timeout_s).raise_for_status()
    except httpx.HTTPError:
        return None
    return info


def ensure_gateway(state: LocalState, port: int = 0) -> GatewayInfo:
    """Start the gateway unless it is already running; return where it answers."""
    with FileLock(state.home / "gateway.lock", timeout=START_TIMEOUT_S + 30):
        info = running_gateway(state)
        if info:
            return info
        recorded = _recorded(state)
        if recorded is not None and alive(recorded.pid):  # there, but not answering in 5 s: busy, not dead
            info = running_gateway(state, timeout_s=START_TIMEOUT_S)
            if info:
                return info
            stop_process(recorded.pid, grace_s=10)
        (state.home / GATEWAY_FILE).unlink(missing_ok=True)
        log = state.home / "gateway.log"
        proc = start_detached([sys.executable, "-m", "backends.local.gateway.server", "--home", str(state.home),
                               "--port", str(port)], log, cwd=PROJECT_ROOT)
        return wait_until_up(lambda: running_gateway(state), proc, "the local gateway", log, START_TIMEOUT_S)


def stop_gateway(state: LocalState, timeout_s: float = 30) -> bool:
    """Stop the gateway (its endpoints' and functions' processes with it). False if none was running."""
    path = state.home / GATEWAY_FILE
    info = _recorded(state)
    if info is None or not alive(info.pid):
        path.unlink(missing_ok=True)
        return False
    try:
        httpx.post(f"{info.url}/_local/shutdown", timeout=5)
        asked = True
    except httpx.HTTPError:
        asked = False
    stop_process(info.pid, grace_s=timeout_s, signal_first=not asked)
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
