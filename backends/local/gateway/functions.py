"""Local Lambda functions: a function's real handler runs in execution environments (one process
each, see lambda_runtime.py) under Lambda's rules: one invocation per environment at a time, idle
environments reused, a cold start when none is idle, provisioned environments initialized ahead,
reserved concurrency as a hard cap (429 beyond it), the function timeout enforced by killing the
environment, and code/configuration updates served by new environments while old ones drain.

Each environment is a process on this machine, so at most MAX_LOCAL_ENVIRONMENTS live at once, all
functions together (provisioned ones included): a cold start at the cap first stops the least
recently used idle on-demand environment of any function, and is throttled (429,
ConcurrentInvocationLimitExceeded) when none is idle. Event (asynchronous) invocations wait in one
bounded queue (MAX_QUEUED_EVENTS events, MAX_QUEUED_EVENT_BYTES of payloads: a 429 beyond it) for
EVENT_WORKERS workers; a throttled event is retried after each of EVENT_RETRY_DELAYS_S, then dropped
and counted (async_events_dropped), as Lambda retries throttled events (for hours there). A handler's
error is not retried locally (Lambda retries an event's function error twice).

State lives under ``state_dir/<name>/``: ``code/<sha>/`` (an immutable copy of the code folder),
``logs/<generation>-<n>.log`` (one per environment: START/END/REPORT lines and the handler's output)
(the configuration lives in memory: a stopped gateway's functions are published again by the next flow run).
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from backends.aws.functions import ALIAS
from backends.local.gateway.environments import (
    MAX_LOCAL_ENVIRONMENTS, Config, Environment, EnvironmentGoneError, Generation, HostedFunction, copy_and_hash,
    error_payload, now_iso, process_env, validate,
)
from backends.local.gateway.function_types import (
    FunctionInfo, FunctionNotFoundError, FunctionReply, InvalidPayloadError, QueuedEvent, TooManyRequestsError,
)
from backends.local.gateway.guard import ControlInputError
from backends.local.gateway.lambda_names import partition
from backends.local.gateway.lambda_runtime import ACCOUNT_ID, decode_event
from backends.local.gateway.s3 import S3Grant

log = logging.getLogger(__name__)
# What a local function answers to besides its name: $LATEST, and the alias the aws backend points
# at each release. Locally a function has one version, $LATEST, and the alias points at it (Lambda
# lets an alias point at $LATEST), so an invocation through it executes, and reports, $LATEST.
QUALIFIERS = ("$LATEST", ALIAS)
PRECHECK_BYTES = 64 * 1024  # payloads up to this are checked for JSON before an environment is taken
MAX_EVENT_BYTES = 1024 * 1024  # Lambda's limit on an asynchronous (Event) payload (a synchronous one: 6 MB)
MAX_QUEUED_EVENTS = 256  # Event invocations waiting for a worker, all functions together
MAX_QUEUED_EVENT_BYTES = 32 * 1024 * 1024  # their payloads, until each is delivered or dropped
EVENT_WORKERS = 8  # Event invocations running at once
EVENT_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)  # a throttled event waits this long before each new try


class FunctionManager:
    def __init__(self, state_dir: Path, python: str = sys.executable, idle_timeout_s: float = 300,
                 init_timeout_s: float = 10, max_concurrency: int = 1000, base_env: dict[str, str] | None = None,
                 region: str | None = None, max_environments: int = MAX_LOCAL_ENVIRONMENTS,
                 max_queued_events: int = MAX_QUEUED_EVENTS, max_queued_event_bytes: int = MAX_QUEUED_EVENT_BYTES,
                 event_workers: int = EVENT_WORKERS,
                 event_retry_delays_s: tuple[float, ...] = EVENT_RETRY_DELAYS_S):
        self.state_dir = Path(state_dir)
        self.python = python
        # max_concurrency: the account's concurrent executions (Lambda's rule); max_environments: the
        # processes this machine runs at once (the local cap).
        self.idle_timeout_s, self.init_timeout_s, self.max_concurrency = idle_timeout_s, init_timeout_s, max_concurrency
        self.max_environments = max_environments
        self.max_queued_events, self.max_queued_event_bytes = max_queued_events, max_queued_event_bytes
        self.event_workers, self.event_retry_delays_s = event_workers, tuple(event_retry_delays_s)
        self._events: asyncio.Queue[QueuedEvent] = asyncio.Queue()
        self._event_bytes = 0  # payloads queued or being delivered
        self._workers: list[asyncio.Task] = []
        self.base_env = dict(base_env or {})  # under every function's own environment
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self._functions: dict[str, HostedFunction] = {}
        self._gens: set[Generation] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()
        self._alive: set[Environment] = set()  # every environment process not yet reaped
        self._reaper: asyncio.Task | None = None
        self._busy = 0
        self._numbers = itertools.count(1)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        if self._reaper is None:
            self._reaper = loop.create_task(self._reap_loop())
        if not self._workers:
            self._workers = [loop.create_task(self._event_worker()) for _ in range(self.event_workers)]

    async def close(self) -> None:
        background = [task for task in (self._reaper, *self._workers) if task is not None]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        self._reaper, self._workers = None, []
        while not self._events.empty():  # events not yet delivered are lost with the gateway, as logged
            log.warning("function %s: an Event invocation was not delivered before the gateway stopped",
                        self._events.get_nowait().name)
        self._event_bytes = 0
        for task in list(self._tasks):
            task.cancel()
        envs = list(self._alive)
        for env in envs:
            env.kill()
        await asyncio.gather(*(env.reap() for env in envs), *list(self._tasks), return_exceptions=True)
        self._alive.clear()
        self._functions.clear()
        self._gens.clear()

    # -- control ------------------------------------------------------------------------
    async def create_or_update(self, name: str, code_dir: str, handler: str = "handler.lambda_handler",
                               environment: dict[str, str] | None = None, memory_mb: int = 512, timeout_s: int = 30,
                               reserved_concurrency: int | None = None, provisioned_concurrency: int = 0) -> FunctionInfo:
        environment = dict(environment or {})
        validate(name, handler, environment, memory_mb, timeout_s, reserved_concurrency, provisioned_concurrency)
        if not Path(code_dir).is_dir():
            raise ControlInputError("code_dir", f"code_dir {code_dir} is not a folder")
        reserved = None if reserved_concurrency is None else int(reserved_concurrency)
        provisioned = int(provisioned_concurrency)
        others = sum(fn.provisioned for other, fn in self._functions.items() if other != name)
        if others + provisioned > self.max_environments:
            raise ControlInputError("provisioned_concurrency", (
                f"provisioned_concurrency {provisioned} and the other functions' {others} would pass the local cap "
                f"of {self.max_environments} execution environments alive at once (MAX_LOCAL_ENVIRONMENTS: each is "
                "a process on this machine)"))
        async with self._locks.setdefault(name, asyncio.Lock()):
            sha, stored = await asyncio.to_thread(copy_and_hash, Path(code_dir), self.state_dir / name / "code")
            config = Config(sha, stored, handler, tuple(sorted(environment.items())), int(memory_mb), int(timeout_s))
            fn = self._functions.get(name)
            if fn is not None and fn.gen.config == config:  # same code and configuration: concurrency only
                if (fn.reserved, fn.provisioned) != (reserved, provisioned):
                    fn.reserved, fn.provisioned, fn.last_modified = reserved, provisioned, now_iso()
                    for env in [e for e in fn.gen.envs if e.provisioned][provisioned:]:
                        env.provisioned, env.last_used = False, time.monotonic()  # demoted: reaped once idle
                await self._refill(fn, fn.gen, provisioned)  # also what a refused earlier call did not start
                return self.describe(name)
            gen = Generation(name, config, next(self._numbers))
            self._gens.add(gen)
            fn = fn or HostedFunction(name, gen, reserved, provisioned, now_iso())
            try:
                await self._refill(fn, gen, provisioned)  # warm the new configuration before it takes traffic
            except BaseException:
                self._retire(gen)
                raise
            old, fn.gen = fn.gen, gen
            fn.reserved, fn.provisioned, fn.last_modified = reserved, provisioned, now_iso()
            self._functions[name] = fn
            if old is not gen:
                self._retire(old)  # idle ones stop now, busy ones once their invocation is answered
        self._gc(name)
        return self.describe(name)

    async def delete(self, name: str) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            fn = self._functions.pop(name, None)
            if fn is None:
                raise FunctionNotFoundError(name)
            self._retire(fn.gen)
        self._gc(name)

    def describe(self, name: str) -> FunctionInfo:
        fn = self._functions.get(name)
        if fn is None:
            raise FunctionNotFoundError(name)
        cfg = fn.gen.config
        alive = sum(len(g.envs) for g in self._gens if g.name == name)
        return FunctionInfo(name, cfg.code_sha256, cfg.handler, dict(cfg.environment), cfg.memory_mb, cfg.timeout_s,
                            fn.reserved, fn.provisioned, fn.last_modified, fn.invocations, fn.cold_starts,
                            fn.throttles, fn.errors, alive, fn.busy, self._arn(name), str(cfg.code_dir),
                            fn.last_init_error, fn.async_events_received, fn.async_events_dropped)

    def list(self) -> list[FunctionInfo]:
        return [self.describe(name) for name in sorted(self._functions)]

    def s3_grant(self, access_key_id: str) -> S3Grant | None:
        """What the function holding this access key may read from the local S3 (None: no function holds it)."""
        for fn in self._functions.values():
            if fn.credentials["AWS_ACCESS_KEY_ID"] == access_key_id:
                prefixes = dict(fn.gen.config.environment).get("ALLOWED_S3_PREFIXES", "")
                return S3Grant(fn.credentials["AWS_SECRET_ACCESS_KEY"],
                               tuple(p.strip() for p in prefixes.split(",") if p.strip()))
        return None

    # -- invoke -------------------------------------------------------------------------
    def resolve(self, name: str, qualifier: str | None = None) -> HostedFunction:
        """The function an Invoke of ``name`` with ``qualifier`` runs; FunctionNotFoundError if none."""
        fn = self._functions.get(name)
        if fn is None or (qualifier is not None and qualifier not in QUALIFIERS):
            raise FunctionNotFoundError(name)
        return fn

    async def invoke(self, name: str, payload: bytes, qualifier: str | None = None) -> FunctionReply:
        """Run one invocation. FunctionNotFoundError, TooManyRequestsError, InvalidPayloadError."""
        fn = self.resolve(name, qualifier)
        if len(payload) <= PRECHECK_BYTES:  # cheap here; bigger ones are checked by the runtime, same error
            try:
                decode_event(payload)
            except ValueError as exc:
                raise InvalidPayloadError(str(exc)) from None
        if fn.reserved is not None and fn.busy >= fn.reserved:
            fn.throttles += 1
            raise TooManyRequestsError(name)
        if self._busy >= self.max_concurrency:
            fn.throttles += 1
            raise TooManyRequestsError(name, "ConcurrentInvocationLimitExceeded")
        fn.busy += 1
        fn.invocations += 1
        self._busy += 1
        try:
            result = await self._invoke(fn, fn.gen, payload, self._arn(name, qualifier))
        except (InvalidPayloadError, TooManyRequestsError) as refused:
            fn.invocations -= 1  # refused before the handler ran
            fn.throttles += isinstance(refused, TooManyRequestsError)
            raise
        finally:
            fn.busy -= 1
            self._busy -= 1
        if result.function_error:
            fn.errors += 1
        return result

    def submit_event(self, name: str, payload: bytes, qualifier: str | None = None) -> None:
        """Queue an Event (asynchronous) invocation, checked as Lambda checks it before answering 202:
        FunctionNotFoundError, InvalidPayloadError, TooManyRequestsError when the queue is full."""
        fn = self.resolve(name, qualifier)
        try:
            decode_event(payload)
        except ValueError as exc:
            raise InvalidPayloadError(str(exc)) from None
        if (self._events.qsize() >= self.max_queued_events
                or self._event_bytes + len(payload) > self.max_queued_event_bytes):
            fn.throttles += 1
            raise TooManyRequestsError(name, "FunctionInvocationRateLimitExceeded", (
                f"{self._events.qsize()} Event invocations ({self._event_bytes} bytes) wait already; the local "
                f"queue holds {self.max_queued_events} ({self.max_queued_event_bytes} bytes)"))
        self._events.put_nowait(QueuedEvent(name, payload, qualifier))
        self._event_bytes += len(payload)
        fn.async_events_received += 1

    async def _event_worker(self) -> None:
        while True:
            event = await self._events.get()
            try:
                await self._deliver(event)
            except Exception:  # the caller had its 202; the worker must live on
                log.exception("function %s: an Event invocation failed in the gateway", event.name)
            finally:
                self._event_bytes -= len(event.payload)

    async def _deliver(self, event: QueuedEvent) -> None:
        """Run one queued event; a throttled one is retried after each delay, then dropped and counted."""
        for delay in (*self.event_retry_delays_s, None):
            try:
                await self.invoke(event.name, event.payload, event.qualifier)
                return
            except TooManyRequestsError as throttled:
                reason = throttled.reason
            except FunctionNotFoundError:
                log.warning("function %s: an Event invocation was dropped: the function is gone", event.name)
                return
            if delay is not None:
                await asyncio.sleep(delay)
        fn = self._functions.get(event.name)
        if fn is not None:
            fn.async_events_dropped += 1
        log.warning("function %s: an Event invocation was dropped after %d throttled tries (%s)", event.name,
                    len(self.event_retry_delays_s) + 1, reason)

    async def _invoke(self, fn: HostedFunction, gen: Generation, payload: bytes, arn: str) -> FunctionReply:
        request_id, began = str(uuid.uuid4()), time.perf_counter()
        env = None
        while gen.idle and env is None:
            env = gen.idle.pop()
            if not env.alive:  # its process ended while idle
                self._discard(env, kill=True, replace=True)
                env = None
        cold = env is None
        if cold:
            env, init_error = await self._start_env(fn, gen, provisioned=False)  # TooManyRequestsError at the cap
            fn.cold_starts += 1
            if init_error is not None:
                return FunctionReply(init_error, function_error="Unhandled", cold_start=True, request_id=request_id,
                                        duration_ms=(time.perf_counter() - began) * 1000, log_result=env.log_tail(0))
        since, timeout_s, keep, kind = env.log_position(), gen.config.timeout_s, True, "error"
        began = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                kind, body = await env.invoke(request_id, time.time() * 1000 + timeout_s * 1000, payload, arn)
            is_error = kind != "result"
        except TimeoutError:
            is_error, keep = True, False
            body = error_payload("Sandbox.Timedout", f"{now_iso('Z')} {request_id} Task timed out after {timeout_s:.2f} seconds")
        except EnvironmentGoneError as gone:
            is_error, keep = True, False
            body = error_payload("Runtime.ExitError", f"RequestId: {request_id} Error: Runtime exited with error: {gone.describe()}")
        except BaseException:  # cancelled mid-invocation: the environment's channel is out of step
            self._discard(env, kill=True, replace=True)
            raise
        duration_ms = (time.perf_counter() - began) * 1000
        if keep and kind == "invalid_payload":  # the runtime refused the event; the environment is fine
            self._release(env)
            raise InvalidPayloadError(body.decode("utf-8", "replace"))
        log = env.log_tail(since)
        if keep and env.alive:
            self._release(env)
        else:
            self._discard(env, kill=True, replace=True)
        return FunctionReply(body, function_error="Unhandled" if is_error else None, log_result=log,
                                cold_start=cold, duration_ms=duration_ms, request_id=request_id,
                                init_duration_ms=env.init_ms if cold else None)

    # -- environments ---------------------------------------------------------------------
    async def _start_env(self, fn: HostedFunction, gen: Generation, provisioned: bool) -> tuple[Environment, bytes | None]:
        """Spawn and init one environment of ``gen``: (env, None) when ready, else (env, error payload)."""
        cfg = gen.config
        log_path = self.state_dir / fn.name / "logs" / f"{gen.number}-{uuid.uuid4().hex[:8]}.log"
        self._make_room(fn, gen)  # with the count below, before any await: two starts never share a place
        gen.starting += 1
        try:
            env = await Environment.spawn(self.python, cfg.code_dir, cfg.handler, fn.name, cfg.memory_mb, cfg.timeout_s,
                                          process_env(fn.name, cfg, provisioned, self.region, self.base_env,
                                                      fn.credentials),
                                          log_path, gen, provisioned)
        finally:
            gen.starting -= 1
        gen.envs.add(env)
        self._alive.add(env)
        try:
            error = await env.init(self.init_timeout_s)
        except BaseException:
            self._discard(env, kill=True)
            raise
        if error is not None:
            fn.last_init_error = json.loads(error).get("errorMessage")
            self._discard(env, kill=True)
        return env, error

    async def _refill(self, fn: HostedFunction, gen: Generation, provisioned: int) -> None:
        """Start provisioned environments of ``gen`` until it has ``provisioned`` of them."""
        missing = provisioned - sum(1 for env in gen.envs if env.provisioned) - gen.provisioning
        if missing <= 0 or gen.retired:
            return
        gen.provisioning += missing
        try:
            started = await asyncio.gather(*(self._start_env(fn, gen, provisioned=True) for _ in range(missing)),
                                           return_exceptions=True)
        finally:
            gen.provisioning -= missing
        for item in started:
            if not isinstance(item, BaseException) and item[1] is None:
                self._release(item[0])
        for item in started:
            if isinstance(item, BaseException):
                raise item

    def _environment_count(self) -> int:
        """Environment processes alive or starting, all functions together (stopping ones no longer count)."""
        return sum(len(g.envs) + g.starting for g in self._gens)

    def _make_room(self, fn: HostedFunction, gen: Generation) -> None:
        """Make room for one more environment of ``gen`` under max_environments: stop the least recently
        used idle on-demand environment of any function (or an idle one of ``fn``'s generation being
        replaced); TooManyRequestsError (ConcurrentInvocationLimitExceeded) when there is none."""
        if self._environment_count() < self.max_environments:
            return
        idle = [env for g in self._gens for env in g.idle
                if not env.provisioned or (g.name == fn.name and g is not gen and g is fn.gen)]
        if not idle:
            raise TooManyRequestsError(fn.name, "ConcurrentInvocationLimitExceeded", (
                f"{self._environment_count()} execution environments are alive and none is idle; the local cap is "
                f"{self.max_environments} (MAX_LOCAL_ENVIRONMENTS)"))
        self._discard(min(idle, key=lambda env: env.last_used), kill=False)

    def _release(self, env: Environment) -> None:
        env.last_used = time.monotonic()
        if env.generation.retired:
            self._discard(env, kill=False)
        else:
            env.generation.idle.append(env)

    def _discard(self, env: Environment, kill: bool, replace: bool = False) -> None:
        gen = env.generation
        gen.envs.discard(env)
        with contextlib.suppress(ValueError):
            gen.idle.remove(env)
        if kill:
            env.kill()

        def gone():
            self._alive.discard(env)
            self._gc(gen.name)
        self._background(env.reap() if kill else env.stop(), after=gone)
        fn = self._functions.get(gen.name)
        if replace and env.provisioned and fn is not None and fn.gen is gen:
            self._background(self._refill(fn, gen, fn.provisioned))  # Lambda replaces a lost provisioned environment

    def _retire(self, gen: Generation) -> None:
        gen.retired = True
        for env in list(gen.idle):
            self._discard(env, kill=False)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(30.0, self.idle_timeout_s / 4)))
            self.reap_idle()

    def reap_idle(self) -> None:
        """Stop idle non-provisioned environments unused for idle_timeout_s."""
        cutoff = time.monotonic() - self.idle_timeout_s
        for fn in list(self._functions.values()):
            for env in [e for e in fn.gen.idle if not e.provisioned and e.last_used <= cutoff]:
                self._discard(env, kill=False)

    def _background(self, coro, after=lambda: None) -> None:
        async def run():
            try:
                await coro
            except TooManyRequestsError as exc:  # a lost provisioned environment not replaced: at the cap
                log.warning("%s", exc)
            finally:
                after()
        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- bookkeeping ----------------------------------------------------------------------
    def _gc(self, name: str) -> None:
        """Drop drained generations; remove code copies nothing uses, and a deleted function's folder."""
        self._gens = {g for g in self._gens if g.live}
        lock = self._locks.get(name)
        if lock is not None and lock.locked():
            return
        root = self.state_dir / name
        if name not in self._functions and not any(g.name == name for g in self._gens):
            shutil.rmtree(root, ignore_errors=True)
            return
        keep = {g.config.code_dir for g in self._gens}
        for folder in (root / "code").glob("*"):  # .tmp-* too: no copy is under way (the lock is free)
            if folder not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def _arn(self, name: str, qualifier: str | None = None) -> str:
        arn = f"arn:{partition(self.region)}:lambda:{self.region}:{ACCOUNT_ID}:function:{name}"
        return f"{arn}:{qualifier}" if qualifier else arn
