"""Execution environments for functions.py: the manager's side of one lambda_runtime.py process (spawn,
wait for its init, send invocations over the frame protocol, stop or kill it), the process environment
Lambda gives it, a function's configuration (one generation per code + configuration), its code copy
and the checks on a create/update request."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from backends.local.gateway.lambda_runtime import FRAME, encode_frame

RUNTIME_SCRIPT = Path(__file__).with_name("lambda_runtime.py")
LOG_TAIL_BYTES = 4096
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]+$")
RESERVED_ENV = {"_HANDLER", "_X_AMZN_TRACE_ID", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EXECUTION_ENV",
                "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
                "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
                "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR"}
# Each environment is a process, so a local function keeps at most this many initialized (AWS allows
# thousands; a configuration that asks for more is refused, naming the cap).
MAX_LOCAL_PROVISIONED = 32
ACCESS_KEY_PREFIX = "LKIA"  # local keys: the gateway's S3 (s3.py) answers only them, nothing on AWS knows them


def issue_credentials() -> dict[str, str]:
    """A function's own AWS credentials: what its boto3 signs local S3 requests with (s3.py checks them)."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY_PREFIX + secrets.token_hex(8).upper(),
            "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)}


@dataclass(frozen=True)
class Config:
    code_sha256: str
    code_dir: Path
    handler: str
    environment: tuple[tuple[str, str], ...]
    memory_mb: int
    timeout_s: int


@dataclass(eq=False)
class Generation:
    """The environments of one code + configuration of a function; retired (drained) on update."""
    name: str
    config: Config
    number: int
    envs: set = field(default_factory=set)  # alive: idle or busy
    idle: list = field(default_factory=list)
    starting: int = 0  # being spawned, not yet in envs
    provisioning: int = 0  # provisioned ones being started (so concurrent refills do not overshoot)
    retired: bool = False

    @property
    def live(self) -> bool:
        return not self.retired or bool(self.envs) or self.starting > 0


@dataclass(eq=False)
class HostedFunction:
    """A function's configuration of record, its current generation and its counters."""
    name: str
    gen: Generation
    reserved: int | None
    provisioned: int
    last_modified: str
    invocations: int = 0
    cold_starts: int = 0
    throttles: int = 0
    errors: int = 0
    busy: int = 0
    last_init_error: str | None = None
    credentials: dict[str, str] = field(default_factory=issue_credentials)


def now_iso(zone: str = "+0000") -> str:
    """Lambda's LastModified format (``...T12:00:00.000+0000``); ``zone="Z"`` for log-style stamps."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + zone


def error_payload(error_type: str, message: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type}).encode()


def copy_and_hash(source: Path, code_root: Path) -> tuple[str, Path]:
    """Copy ``source`` to code_root/<sha>/ (once per content): (base64 sha256 of the copy, its folder)."""
    code_root.mkdir(parents=True, exist_ok=True)
    tmp = code_root / f".tmp-{uuid.uuid4().hex}"
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
    digest = hashlib.sha256()
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(tmp).as_posix()}\0{len(data)}\0".encode() + data)
    target = code_root / digest.hexdigest()[:20]
    if target.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    return base64.b64encode(digest.digest()).decode(), target


def process_env(name: str, cfg: Config, provisioned: bool, region: str, base_env: dict[str, str],
                credentials: dict[str, str]) -> dict[str, str]:
    """What Lambda puts in an environment's process env: little of the host's (no config/credential
    files), ``base_env``, the function's variables, the function's own credentials unless it sets
    some, the reserved ones."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8", "TZ": ":UTC",
           "PYTHONDONTWRITEBYTECODE": "1", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    if os.environ.get("TMPDIR"):
        env["TMPDIR"] = os.environ["TMPDIR"]
    env.update(base_env)
    env.update(dict(cfg.environment))
    if "AWS_ACCESS_KEY_ID" not in env:
        env.pop("AWS_SESSION_TOKEN", None)
        env.update(credentials)
    env.update({
        "AWS_LAMBDA_FUNCTION_NAME": name, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(cfg.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_REGION": region, "AWS_DEFAULT_REGION": region,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "provisioned-concurrency" if provisioned else "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": f"{datetime.now(timezone.utc):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}",
        "LAMBDA_TASK_ROOT": str(cfg.code_dir), "LAMBDA_RUNTIME_DIR": str(RUNTIME_SCRIPT.parent), "_HANDLER": cfg.handler})
    return env


def validate(name, handler, environment, memory_mb, timeout_s, reserved, provisioned) -> None:
    """Lambda's checks on CreateFunction / UpdateFunctionConfiguration / concurrency settings (ValueError)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"function name {name!r} must be 1-64 letters, digits, '-' or '_'")
    if not isinstance(handler, str) or not handler.strip() or any(c.isspace() for c in handler):
        raise ValueError(f"handler {handler!r} must look like module.function")
    bad = [k for k, v in environment.items() if not isinstance(k, str) or not ENV_KEY_RE.match(k) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"environment variables must be str -> str with names like [A-Za-z][A-Za-z0-9_]+: {bad}")
    if reserved_keys := sorted(RESERVED_ENV & set(environment)):
        raise ValueError("Lambda was unable to configure your environment variables because the environment "
                         f"variables you have provided contains reserved keys: {', '.join(reserved_keys)}")
    if not 128 <= int(memory_mb) <= 10240:
        raise ValueError(f"memory_mb must be 128..10240, not {memory_mb}")
    if not 1 <= int(timeout_s) <= 900:
        raise ValueError(f"timeout_s must be 1..900, not {timeout_s}")
    if reserved is not None and int(reserved) < 0:
        raise ValueError(f"reserved_concurrency must be >= 0 or None, not {reserved}")
    if not 0 <= int(provisioned) <= MAX_LOCAL_PROVISIONED:
        raise ValueError(f"provisioned_concurrency must be 0..{MAX_LOCAL_PROVISIONED} locally (each is a process; "
                         f"MAX_LOCAL_PROVISIONED), not {provisioned}")
    if reserved is not None and int(provisioned) > int(reserved):
        raise ValueError(f"provisioned_concurrency ({provisioned}) cannot exceed reserved_concurrency ({reserved})")


class EnvironmentGoneError(Exception):
    """The environment's process ended while an invocation was running (Runtime.ExitError)."""

    def __init__(self, returncode: int | None):
        super().__init__(returncode)
        self.returncode = returncode

    def describe(self) -> str:
        code = self.returncode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"signal: {signal.Signals(-code).name[3:].lower().replace('kill', 'killed')}"
            return f"signal: {-code}"
        return f"exit status {code}"


class Environment:
    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path, generation, provisioned: bool):
        self.proc = proc
        self.log_path = log_path
        self.generation = generation
        self.provisioned = provisioned
        self.last_used = time.monotonic()
        self.init_ms: float | None = None
        self.invoked = False  # the first invocation reports its init duration
        self._log_fd: int | None = os.open(log_path, os.O_RDONLY)  # for per-invocation log tails

    @classmethod
    async def spawn(cls, python: str, code_dir: Path, handler: str, name: str, memory_mb: int, timeout_s: int,
                    env: dict[str, str], log_path: Path, generation, provisioned: bool) -> "Environment":
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                python, "-P", str(RUNTIME_SCRIPT), "--code-dir", str(code_dir), "--handler", handler,
                "--function-name", name, "--memory-mb", str(memory_mb), "--timeout-s", str(timeout_s),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, env=env,
                cwd=str(code_dir), limit=2 ** 20)
        return cls(proc, log_path, generation, provisioned)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def _read_frame(self) -> tuple[dict, bytes]:
        try:
            head = await self.proc.stdout.readexactly(FRAME.size)
            header_len, body_len = FRAME.unpack(head)
            header = json.loads(await self.proc.stdout.readexactly(header_len))
            body = await self.proc.stdout.readexactly(body_len) if body_len else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 2)
            raise EnvironmentGoneError(self.proc.returncode) from None
        return header, body

    async def init(self, timeout_s: float) -> bytes | None:
        """Wait for the init phase: None when ready, else the Lambda-style init error payload."""
        try:
            async with asyncio.timeout(timeout_s):
                header, body = await self._read_frame()
        except TimeoutError:
            return error_payload("Runtime.InitTimeout", f"Init phase timed out after {timeout_s:.2f} seconds")
        except EnvironmentGoneError as gone:
            return error_payload("Runtime.ExitError", f"Error: Runtime exited during init: {gone.describe()}")
        self.init_ms = header.get("init_ms")
        return None if header["type"] == "ready" else body

    def log_position(self) -> int:
        return os.fstat(self._log_fd).st_size if self._log_fd is not None else 0

    def log_tail(self, since: int) -> str:
        """What the environment logged since ``since`` (at most the last 4 KB)."""
        if self._log_fd is None:
            return ""
        start = max(since, os.fstat(self._log_fd).st_size - LOG_TAIL_BYTES)
        return os.pread(self._log_fd, LOG_TAIL_BYTES, start).decode("utf-8", "replace")

    def _close_log(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    async def invoke(self, request_id: str, deadline_ms: float, payload: bytes, arn: str) -> tuple[str, bytes]:
        """Run one invocation: (what the runtime answered: result | error | invalid_payload, its bytes).
        Raises EnvironmentGoneError."""
        header = {"id": request_id, "deadline_ms": deadline_ms, "init": not self.invoked and not self.provisioned,
                  "arn": arn}
        self.invoked = True
        try:
            self.proc.stdin.write(encode_frame(header, payload))
            if len(payload) > 65536:
                await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError):
            raise EnvironmentGoneError(self.proc.returncode) from None
        answer, body = await self._read_frame()
        return answer["type"], body

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def stop(self, grace_s: float = 2.0) -> None:
        """Close the channel (the runtime exits between invocations), kill it if it lingers."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except asyncio.TimeoutError:
                self.kill()
        await self.reap()

    async def reap(self) -> None:
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)
        finally:
            self._close_log()
