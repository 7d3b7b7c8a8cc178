"""Execution environments for functions.py: the manager's side of one lambda_runtime.py process (spawn,
wait for its init, send invocations over the frame protocol, stop or kill it), the process environment
Lambda gives it, a function's configuration (one generation per code + configuration), its code copy
and the checks on a create/update request (ControlInputError naming the field: a 400)."""
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
import stat
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from backends.local.gateway.guard import ControlInputError
from backends.local.gateway.lambda_runtime import FRAME, encode_frame

RUNTIME_SCRIPT = Path(__file__).with_name("lambda_runtime.py")
LOG_TAIL_BYTES = 4096
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_HANDLER_CHARS = 128  # Lambda's Handler: at most 128 characters, pattern [^\s]+
ENV_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]+$")
RESERVED_ENV = {"_HANDLER", "_X_AMZN_TRACE_ID", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EXECUTION_ENV",
                "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
                "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
                "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR"}
# Each environment is a process, so a local function keeps at most this many initialized (AWS allows
# thousands; a configuration that asks for more is refused, naming the cap).
MAX_LOCAL_PROVISIONED = 32
# Environment processes alive at once, all functions together, provisioned ones included: each is
# 45-65 MB resident with lambda_src's handler and its boto3 client (44 MB measured here), so 3-4 GB
# at the cap. Lambda allows the account 1000 concurrent executions (FunctionManager.max_concurrency
# keeps that rule); locally a new environment past this cap first stops the least recently used idle
# on-demand one, and is throttled (429 ConcurrentInvocationLimitExceeded) when none is idle.
MAX_LOCAL_ENVIRONMENTS = 64
MAX_CODE_BYTES = 250 * 1024 * 1024  # Lambda's limit on a function's unzipped code
_SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", ".git")
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
    async_events_received: int = 0
    async_events_dropped: int = 0
    credentials: dict[str, str] = field(default_factory=issue_credentials)


def now_iso(zone: str = "+0000") -> str:
    """Lambda's LastModified format (``...T12:00:00.000+0000``); ``zone="Z"`` for log-style stamps."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + zone


def error_payload(error_type: str, message: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type}).encode()


def copy_and_hash(source: Path, code_root: Path) -> tuple[str, Path]:
    """Copy ``source`` to code_root/<sha>/ (once per content): (base64 sha256 of the copy, its folder).

    Only folders and regular files are copied, never through a link (a link to / would copy the
    machine): a symbolic link, named pipe, socket or device under ``source``, more than MAX_CODE_BYTES,
    or a file that cannot be read is a ControlInputError on code_dir naming the path; nothing is left."""
    code_root.mkdir(parents=True, exist_ok=True)
    tmp = code_root / f".tmp-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        digest = hashlib.sha256()
        for rel, path in _code_files(source):
            _copy_file(path, tmp.joinpath(*rel), "/".join(rel), digest)
        target = code_root / digest.hexdigest()[:20]
        if target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ControlInputError("code_dir", f"code_dir: cannot copy {source}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return base64.b64encode(digest.digest()).decode(), target


def _code_files(source: Path) -> list[tuple[tuple[str, ...], Path]]:
    """The regular files under ``source`` (relative path parts, path), in path order; ControlInputError
    at the first entry that is neither a folder nor a regular file, or once they pass MAX_CODE_BYTES."""
    files, folders, total = [], [(source, ())], 0
    while folders:
        folder, rel = folders.pop()
        with os.scandir(folder) as scan:
            entries = list(scan)
        skipped = _SKIPPED(str(folder), [e.name for e in entries])
        for entry in entries:
            if entry.name in skipped:
                continue
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                folders.append((Path(entry.path), rel + (entry.name,)))
            elif stat.S_ISREG(info.st_mode):
                files.append((rel + (entry.name,), Path(entry.path)))
                total += info.st_size
                if total > MAX_CODE_BYTES:
                    raise ControlInputError("code_dir", f"code_dir holds more than {MAX_CODE_BYTES} bytes "
                                                        f"(Lambda's limit on unzipped code), at {entry.path}")
            else:
                kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "a named pipe, socket or device"
                raise ControlInputError("code_dir", f"code_dir: {entry.path} is {kind}; a function's code "
                                                    "folder may hold only folders and regular files")
    return sorted(files)


def _copy_file(path: Path, copy: Path, rel: str, digest) -> None:
    """Copy one regular file, opened without following a link (and refused if it is no longer a
    regular file), adding its relative path, size and bytes to ``digest``."""
    copy.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ControlInputError("code_dir", f"code_dir: {path} is not a regular file")
        digest.update(os.fsencode(rel) + f"\0{info.st_size}\0".encode())  # fsencode: any file name
        with open(copy, "xb") as dst:
            while chunk := src.read(1024 * 1024):
                digest.update(chunk)
                dst.write(chunk)


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
    """Lambda's checks on CreateFunction / UpdateFunctionConfiguration / concurrency settings
    (ControlInputError, a ValueError, naming the field)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ControlInputError("name", f"function name {name!r} must be 1-64 letters, digits, '-' or '_'")
    if (not isinstance(handler, str) or not handler or len(handler) > MAX_HANDLER_CHARS
            or any(c.isspace() for c in handler)):
        shown = repr(handler) if len(str(handler)) <= 80 else f"of {len(handler)} characters"
        raise ControlInputError("handler", f"handler {shown} must look like module.function: 1-{MAX_HANDLER_CHARS} "
                                           "characters, no white space")
    bad = [k for k, v in environment.items() if not isinstance(k, str) or not ENV_KEY_RE.match(k) or not isinstance(v, str)]
    if bad:
        raise ControlInputError("environment", "environment variables must be str -> str with names like "
                                               f"[A-Za-z][A-Za-z0-9_]+: {bad}")
    if reserved_keys := sorted(RESERVED_ENV & set(environment)):
        raise ControlInputError("environment", "Lambda was unable to configure your environment variables because "
                                               "the environment variables you have provided contains reserved keys: "
                                               f"{', '.join(reserved_keys)}")
    if not 128 <= int(memory_mb) <= 10240:
        raise ControlInputError("memory_mb", f"memory_mb must be 128..10240, not {memory_mb}")
    if not 1 <= int(timeout_s) <= 900:
        raise ControlInputError("timeout_s", f"timeout_s must be 1..900, not {timeout_s}")
    if reserved is not None and int(reserved) < 0:
        raise ControlInputError("reserved_concurrency", f"reserved_concurrency must be >= 0 or None, not {reserved}")
    if not 0 <= int(provisioned) <= MAX_LOCAL_PROVISIONED:
        raise ControlInputError("provisioned_concurrency", f"provisioned_concurrency must be 0..{MAX_LOCAL_PROVISIONED} "
                                                           "locally (each is a process; MAX_LOCAL_PROVISIONED), not "
                                                           f"{provisioned}")
    if reserved is not None and int(provisioned) > int(reserved):
        raise ControlInputError("provisioned_concurrency", f"provisioned_concurrency ({provisioned}) cannot exceed "
                                                           f"reserved_concurrency ({reserved})")


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
