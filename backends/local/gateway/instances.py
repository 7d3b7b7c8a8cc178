"""Endpoint instances (model_worker processes: started, health-checked, drained, stopped) and records."""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import re
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[3]
WORKER_MODULE = "backends.local.gateway.model_worker"
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker's endpoint name rule
# Each instance is a worker process on this machine: an endpoint has at most this many (SageMaker
# allows far more). A deployment, a scaling or an autoscaling policy asking for more is refused
# (HTTP 400 naming the cap) rather than quietly given fewer.
MAX_LOCAL_INSTANCES = 32


class InstanceStartError(Exception):
    """A worker exited, or did not pass /ping in time; the message ends with its log tail."""


@dataclass
class Deployment:
    """One unpacked model.tar.gz served with one version and environment."""

    id: str
    endpoint: str
    model_artifact: str
    sha256: str
    model_dir: Path
    model_version: str  # as asked ("" lets the worker use the weights' hash)
    environment: dict[str, str]
    served_version: str = ""  # as the workers report it

    def same_as(self, sha256: str, model_version: str, environment: dict[str, str]) -> bool:
        return (self.sha256, self.model_version, self.environment) == (sha256, model_version, environment)


@dataclass(eq=False)
class Instance:
    id: str
    deployment: Deployment
    log_path: Path
    ready_file: Path
    process: asyncio.subprocess.Process | None = None
    port: int = 0
    state: str = "Pending"  # Pending | InService | Draining | Stopped | Failed
    outstanding: int = 0
    started_at: float = field(default_factory=time.time)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def exited(self) -> bool:
        return self.process is None or self.process.returncode is not None

    def describe(self) -> dict:
        return {"id": self.id, "pid": self.pid, "port": self.port, "state": self.state}

    def log_tail(self, lines: int = 10) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 32768))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


@dataclass
class EndpointReply:
    """What an instance answered an invocation."""

    status_code: int
    body: bytes
    content_type: str
    instance_id: str


@dataclass(eq=False)
class HostedEndpoint:
    """An endpoint as the manager keeps it; `instances` are those in service and in routing."""

    name: str
    status: str
    desired: int
    deployment: Deployment | None = None
    instances: list[Instance] = field(default_factory=list)
    deployments: dict[str, Path] = field(default_factory=dict)  # id -> unpacked folder, not yet removed
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    failure_reason: str | None = None
    autoscaling: dict | None = None
    replacements: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    repair: asyncio.Task | None = None
    repair_backoff: float = 0.0
    next_repair: float = 0.0
    turn: itertools.count = field(default_factory=itertools.count)
    shift: "TrafficShift | None" = None  # an update's new instances while they take part of the traffic


@dataclass
class TrafficShift:
    """New instances taking `percent` of the requests during an update's bake, and what they answered."""

    instances: list[Instance]
    percent: int
    requests: int = 0
    errors: int = 0  # 5xx answers and broken connections
    latency_ms: float = 0.0  # summed

    def record(self, status: int | None, latency_ms: float) -> None:
        self.requests += 1
        self.errors += status is None or status >= 500
        self.latency_ms += latency_ms

    def breach(self, max_errors: int, max_latency_ms: float) -> str | None:
        """Why the alarms would go off, or None."""
        if self.errors > max_errors:
            return f"{self.errors} 5xx errors in {self.requests} requests (more than {max_errors})"
        if self.requests and self.latency_ms / self.requests > max_latency_ms:
            return f"average model latency {self.latency_ms / self.requests:.0f} ms (above {max_latency_ms:g} ms)"
        return None


async def start_instance(deployment: Deployment, folder: Path, http: httpx.AsyncClient, threads: int,
                         timeout: float, python: str = sys.executable,
                         registry: set[Instance] | None = None) -> Instance:
    """Start a worker and return it once it answers GET /ping; kill it and raise InstanceStartError if not.

    The instance joins `registry` as soon as its process exists, so that it can be described and,
    whatever happens to the caller, stopped.
    """
    folder.mkdir(parents=True, exist_ok=True)
    instance_id = f"i-{secrets.token_hex(6)}"
    inst = Instance(instance_id, deployment, folder / f"{instance_id}.log", folder / f"{instance_id}.ready")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "SM_NUM_CPUS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.update(deployment.environment)
    env.pop("MODEL_VERSION", None)
    if deployment.model_version:
        env["MODEL_VERSION"] = deployment.model_version
    cmd = [python, "-u", "-m", WORKER_MODULE,
           "--model-dir", str(deployment.model_dir), "--ready-file", str(inst.ready_file), "--port", "0",
           "--threads", str(threads), "--parent-pid", str(os.getpid())]
    with open(inst.log_path, "ab") as logf:
        inst.process = await asyncio.create_subprocess_exec(
            *cmd, cwd=deployment.model_dir, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=logf,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    if registry is not None:
        registry.add(inst)
    try:
        await asyncio.wait_for(_until_ready(inst, http), timeout)
    except BaseException as exc:
        await kill(inst)
        inst.state = "Failed"
        if isinstance(exc, asyncio.TimeoutError):
            raise InstanceStartError(f"instance {instance_id} did not pass /ping within {timeout:.0f} s; "
                                     f"log tail:\n{inst.log_tail()}") from None
        raise
    inst.state = "InService"
    return inst


async def _until_ready(inst: Instance, http: httpx.AsyncClient) -> None:
    while True:
        if inst.exited():
            await inst.process.wait()
            tail = inst.log_tail()
            raise InstanceStartError(f"instance {inst.id} exited with code {inst.process.returncode} before it "
                                     f"was ready: {tail.splitlines()[-1] if tail else 'no output'}; "
                                     f"log tail:\n{tail}")
        if inst.ready_file.is_file():
            info = json.loads(inst.ready_file.read_text())
            inst.port = int(info["port"])
            inst.deployment.served_version = info.get("model_version") or inst.deployment.served_version
            break
        await asyncio.sleep(0.05)
    while True:
        try:
            response = await http.get(f"{inst.url}/ping", timeout=5.0)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if inst.exited():
            raise InstanceStartError(f"instance {inst.id} exited before passing /ping; "
                                     f"log tail:\n{inst.log_tail()}")
        await asyncio.sleep(0.1)


async def drain_and_stop(inst: Instance, drain_timeout: float, grace: float = 10.0) -> None:
    """Wait for the instance's in-flight requests (it must already be out of routing), then stop it."""
    if inst.state == "InService":
        inst.state = "Draining"
    deadline = time.monotonic() + drain_timeout
    while inst.outstanding > 0 and not inst.exited() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await stop(inst, grace)


async def stop(inst: Instance, grace: float = 10.0) -> None:
    """SIGTERM the worker's process group, SIGKILL it if it is still there after `grace` seconds."""
    if not inst.exited():
        _signal_group(inst, signal.SIGTERM)
        try:
            await asyncio.wait_for(inst.process.wait(), grace)
        except asyncio.TimeoutError:
            await kill(inst)
    if inst.state != "Failed":
        inst.state = "Stopped"


async def kill(inst: Instance) -> None:
    if inst.process is None:
        return
    _signal_group(inst, signal.SIGKILL)
    await inst.process.wait()


def _signal_group(inst: Instance, sig: int) -> None:
    if inst.process.returncode is not None:  # reaped: its pid may belong to someone else by now
        return
    try:
        os.killpg(inst.process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def check_arguments(name: str, count: int) -> None:
    """ValueError unless `name` is a valid SageMaker endpoint name and `count` an integer in 1..MAX_LOCAL_INSTANCES."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"invalid endpoint name {name!r}: letters, digits and hyphens, at most 63 characters")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"instance_count must be a positive integer, got {count!r}")
    if count > MAX_LOCAL_INSTANCES:
        raise ValueError(f"instance_count {count} is over the local cap of {MAX_LOCAL_INSTANCES} instances per "
                         f"endpoint (MAX_LOCAL_INSTANCES: each is a process on this machine)")


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
