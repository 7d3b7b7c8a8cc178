"""Long-lived helper processes on this machine (the local gateway, the local Prefect server, the
deployments' runner): started detached from the caller, found again through a small JSON file,
stopped gently and then firmly."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

from backends.errors import WaitTimedOutError
from backends.waiting import wait_for


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie child of ours counts as gone: it is reaped here)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it runs
        return True
    return True


def command_line(pid: int) -> list[str] | None:
    """The arguments `pid` runs with, where the system shows them (/proc); None when it does not."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1] if raw else None


def accepts_connections(port: int, host: str = "127.0.0.1", timeout_s: float = 2.0) -> bool:
    """Whether something listens on host:port (the kernel completes the handshake even for a busy server)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def start_detached(command: list[str], log_path: Path, cwd: Path | None = None,
                   env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command` in a session of its own (a Ctrl-C in the terminal does not reach it), its
    output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd, env=env)


def stop_process(pid: int, grace_s: float = 30.0, signal_first: bool = True) -> None:
    """SIGTERM (unless the caller already asked it to stop), wait up to `grace_s`, then SIGKILL."""
    if signal_first and alive(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    try:
        wait_for(lambda: True if not alive(pid) else None, what=f"process {pid} to exit", timeout_s=grace_s,
                 interval_s=0.1)
    except WaitTimedOutError:  # it would not stop: killed
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def read_record(path: Path) -> dict | None:
    """A process record (pid, url, ...) written with backends.files.write_json, or None."""
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def wait_until_up(check, proc: subprocess.Popen, what: str, log_path: Path, timeout_s: float):
    """Call `check()` until it returns something; fail early when `proc` exits."""
    def probe():
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:] if log_path.exists() else []
            raise RuntimeError(f"{what} exited at start (code {proc.returncode}); see {log_path}"
                               + (": " + " | ".join(tail) if tail else ""))
        return check()
    try:
        return wait_for(probe, what=f"{what} to answer (see {log_path})", timeout_s=timeout_s, interval_s=0.1)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        raise
