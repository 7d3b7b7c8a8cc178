"""Local real-time endpoints: named, versioned, load-balanced groups of model_worker processes.

One EndpointManager lives in the gateway process and owns every worker it starts. Updates are
blue/green: new instances pass /ping before traffic moves; it moves in the update's traffic-shift
steps (canary, linear), rolled back by itself when the new instances' 5xx errors or latency in a
step's bake cross the thresholds, as SageMaker does on its alarms; the old instances are drained,
then stopped, and a failed update leaves them serving. An update keeps the endpoint's capacity, as
SageMaker's UpdateEndpoint with RetainAllVariantProperties: the new model gets as many instances as
the endpoint has now (what autoscaling or a scale call made of it), and deploying the model it
serves again changes nothing; the requested count sizes a new endpoint only. Requests go to the
instance with the fewest outstanding, a monitor replaces instances whose process died, and an
autoscaler (autoscaler.py) follows the registered target-tracking policies.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from backends.errors import DeploymentFailedError, NotFoundError, ServiceUnavailableError
from backends.local.gateway.autoscaler import Autoscaler
from backends.local.gateway.instances import (Deployment, EndpointReply, HostedEndpoint, Instance, TrafficShift,
                                              check_arguments, drain_and_stop, sha256_file, start_instance, stop)
from backends.model_artifact import unpack_model_artifact

log = logging.getLogger(__name__)


class EndpointNotFoundError(NotFoundError):
    """No endpoint of that name."""


class EndpointUpdateError(DeploymentFailedError):
    """A create, update or scale-out failed; the instances serving before still serve."""


class EndpointUnavailableError(ServiceUnavailableError):
    """No instance of the endpoint could answer (all dead, or it timed out)."""


@dataclass
class EndpointInfo:
    name: str
    status: str  # Creating | Updating | InService | Failed | Deleting
    model_version: str
    model_artifact: str
    instance_count: int  # desired
    instances: list[dict]  # {id, pid, port, state}, every live worker (Pending / InService / Draining)
    created_at: float
    updated_at: float
    failure_reason: str | None = None
    autoscaling: dict | None = None
    replacements: int = 0  # instances started to replace ones that died
    current_instance_count: int = 0  # instances in service now
    scaling_activities: list[dict] = field(default_factory=list)  # the autoscaler's last 20, oldest first


class EndpointManager:
    def __init__(self, state_dir: Path, python: str = sys.executable, *, ready_timeout: float = 120.0,
                 drain_timeout: float = 60.0, invoke_timeout: float = 60.0,
                 threads_per_instance: int | None = None, monitor_interval: float = 0.5,
                 autoscaling_interval: float = 10.0):
        self.state_dir = Path(state_dir)
        self.python = python
        self.ready_timeout = ready_timeout
        self.drain_timeout = drain_timeout
        self.invoke_timeout = invoke_timeout
        self.threads_per_instance = threads_per_instance
        self.monitor_interval = monitor_interval
        self._endpoints: dict[str, HostedEndpoint] = {}
        self._workers: set[Instance] = set()  # every worker process started and not yet stopped
        self._client: httpx.AsyncClient | None = None
        self._monitor_task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()  # instances being stopped in the background
        self.autoscaler = Autoscaler(self, interval=autoscaling_interval)

    async def start(self) -> None:
        self._http()
        self._wake = asyncio.Event()
        if self._monitor_task is None:
            self._monitor_task = asyncio.create_task(self._monitor(), name="endpoint-monitor")
        await self.autoscaler.start()

    async def close(self) -> None:
        """Stop the monitor, the autoscaler and every worker this manager started."""
        await self.autoscaler.close()
        tasks = [t for t in [self._monitor_task, *(ep.repair for ep in self._endpoints.values()), *self._tasks] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._monitor_task = None
        self._endpoints.clear()
        await asyncio.gather(*(stop(inst, grace=3.0) for inst in list(self._workers)), return_exceptions=True)
        self._workers.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def create_or_update(self, name: str, model_artifact: str, instance_count: int = 1,
                               model_version: str = "", environment: dict[str, str] | None = None,
                               traffic_shift: dict | None = None) -> EndpointInfo:
        """instance_count: the instances of a new endpoint (one that serves keeps its count).
        traffic_shift: {"steps": [10, 100], "wait_seconds", "max_5xx_errors", "max_model_latency_ms"}
        (core.traffic.gateway_shift); without it, or for a new endpoint, the switch is at once."""
        check_arguments(name, instance_count)
        environment = {str(k): str(v) for k, v in (environment or {}).items()}
        ep = self._endpoints.get(name)
        if ep is None:
            ep = self._endpoints[name] = HostedEndpoint(name, "Creating", instance_count)
        async with ep.lock:
            if self._endpoints.get(name) is not ep:  # deleted while we waited: start over
                return await self.create_or_update(name, model_artifact, instance_count, model_version, environment,
                                                   traffic_shift)
            try:
                sha256 = await asyncio.to_thread(sha256_file, model_artifact)
            except OSError as exc:
                self._fail(ep, f"cannot read the model artifact {model_artifact}: {exc}")
            if ep.deployment is not None:
                if ep.deployment.same_as(sha256, model_version, environment):
                    return self._info(ep)  # what it serves already: nothing changes
                instance_count = ep.desired  # the capacity it has now, for the new model too
            ep.status, ep.updated_at = ("Updating" if ep.deployment else "Creating"), time.time()
            dep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            model_dir = self._folder(name) / "deployments" / dep_id
            dep = Deployment(dep_id, name, str(model_artifact), sha256, model_dir, model_version, environment)
            ep.deployments[dep_id] = model_dir
            try:
                await asyncio.to_thread(unpack_model_artifact, model_artifact, model_dir)
                if not (model_dir / "code" / "inference.py").is_file():
                    raise ValueError("it has no code/inference.py")
                new = await self._start(ep, dep, instance_count)
            except BaseException as exc:  # a bad archive, a worker that crashed or never passed /ping
                shutil.rmtree(ep.deployments.pop(dep_id), ignore_errors=True)
                if isinstance(exc, Exception):
                    self._fail(ep, f"deploying {model_artifact} failed: {exc}")
                ep.status = "InService" if ep.deployment else "Failed"  # cancelled
                raise
            try:
                if ep.deployment is not None and traffic_shift:
                    await self._shift(ep, new, traffic_shift)
            except BaseException as exc:  # the alarms went off (or cancelled): the old model keeps serving
                await self._retire(new)
                shutil.rmtree(ep.deployments.pop(dep_id), ignore_errors=True)
                if isinstance(exc, EndpointUpdateError):
                    self._fail(ep, str(exc))
                ep.status = "InService" if ep.deployment else "Failed"  # cancelled
                raise
            old, old_dep = ep.instances, ep.deployment
            ep.instances, ep.deployment, ep.desired = new, dep, instance_count  # the switch
            ep.status, ep.failure_reason, ep.updated_at = "InService", None, time.time()
            log.info("endpoint %s: %s serving %s on %d instance(s)", name, dep.id, model_artifact, len(new))
            await self._retire(old)
            if old_dep is not None:
                shutil.rmtree(ep.deployments.pop(old_dep.id), ignore_errors=True)
            return self._info(ep)

    async def _shift(self, ep: HostedEndpoint, new: list[Instance], shift: dict) -> None:
        """Send each step's share of the requests to `new`, bake, and raise EndpointUpdateError when
        its errors or latency cross the thresholds. The last step (100 %) is the switch itself."""
        try:
            for percent in [p for p in shift["steps"] if p < 100]:
                ep.shift = TrafficShift(new, percent)
                log.info("endpoint %s: %d %% of the traffic to the new model for %s s", ep.name, percent,
                         shift["wait_seconds"])
                await asyncio.sleep(float(shift["wait_seconds"]))
                breach = ep.shift.breach(int(shift["max_5xx_errors"]), float(shift["max_model_latency_ms"]))
                if breach:
                    raise EndpointUpdateError(f"endpoint {ep.name} rolled back at {percent} % of the traffic: the new "
                                              f"model had {breach}; the previous model still serves")
        finally:
            ep.shift = None

    async def set_instance_count(self, name: str, count: int) -> EndpointInfo:
        check_arguments(name, count)
        ep = self._get(name)
        async with ep.lock:
            if self._endpoints.get(name) is not ep:
                raise EndpointNotFoundError(f"endpoint {name} not found")
            if ep.deployment is None:
                raise EndpointUpdateError(f"endpoint {name} has no model in service (status {ep.status})")
            return await self._scale(ep, count)

    async def delete(self, name: str) -> None:
        ep = self._get(name)
        del self._endpoints[name]  # from now on: not found, no new requests
        self.autoscaler.forget(name)
        ep.status = "Deleting"
        if ep.repair is not None:
            ep.repair.cancel()
        async with ep.lock:
            ep.instances = []
            await asyncio.gather(*(stop(i, grace=5.0) for i in self._workers_of(ep)), return_exceptions=True)
            self._prune()
            for folder in ep.deployments.values():
                shutil.rmtree(folder, ignore_errors=True)
        log.info("endpoint %s deleted", name)

    def describe(self, name: str) -> EndpointInfo:
        return self._info(self._get(name))

    def list(self) -> list[EndpointInfo]:
        return [self._info(ep) for ep in sorted(self._endpoints.values(), key=lambda e: e.name)]

    def set_autoscaling(self, name: str, policy: dict | None) -> EndpointInfo:
        ep = self._get(name)
        ep.autoscaling, ep.updated_at = (dict(policy) if policy else None), time.time()
        self.autoscaler.policy_changed(name)
        return self._info(ep)

    def is_busy(self, name: str) -> bool:
        """Whether the endpoint is gone, or not in service, or being changed (update, scaling, repair)."""
        ep = self._endpoints.get(name)
        return ep is None or ep.status != "InService" or ep.deployment is None or ep.lock.locked()

    async def invoke(self, name: str, body: bytes, content_type: str, accept: str) -> EndpointReply:
        ep = self._get(name)
        headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v}
        tried: set[str] = set()
        lost = False  # a request may take one instance down with it, not all of them
        shift = ep.shift if ep.shift is not None and random.random() * 100 < ep.shift.percent else None
        pool = shift.instances if shift is not None else ep.instances
        while True:
            ready = [i for i in pool if i.state == "InService" and not i.exited() and i.id not in tried]
            if not ready:
                raise EndpointUnavailableError(f"endpoint {name} has no instance able to answer (status {ep.status})")
            start = next(ep.turn) % len(ready)  # least outstanding requests, ties taken in turn
            inst = min(ready[start:] + ready[:start], key=lambda i: i.outstanding)
            inst.outstanding += 1
            began = time.perf_counter()
            try:
                response = await self._http().post(f"{inst.url}/invocations", content=body, headers=headers,
                                                   timeout=httpx.Timeout(self.invoke_timeout, connect=5.0))
            except httpx.TransportError as exc:
                if shift is not None:
                    shift.record(None, (time.perf_counter() - began) * 1000)
                tried.add(inst.id)
                unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))  # it never got the request
                if isinstance(exc, httpx.TimeoutException) and not unsent:
                    raise EndpointUnavailableError(f"instance {inst.id} of endpoint {name} did not answer within "
                                              f"{self.invoke_timeout:.0f} s") from None
                if isinstance(exc, httpx.ConnectError) or inst.exited():
                    self._mark_dead(ep, inst, f"{type(exc).__name__}: {exc}")
                if not unsent and lost:
                    raise EndpointUnavailableError(f"endpoint {name}: the connection to instance {inst.id} broke "
                                              f"during the request ({type(exc).__name__}: {exc})") from None
                lost = lost or not unsent
                continue
            finally:
                inst.outstanding -= 1
            if shift is not None:
                shift.record(response.status_code, (time.perf_counter() - began) * 1000)
            # SageMaker's InvocationsPerInstance: each answered invocation counts 1 / the instances serving.
            self.autoscaler.record_invocation(name, sum(1 for i in ep.instances if i.state == "InService"))
            return EndpointReply(response.status_code, response.content,
                                    response.headers.get("content-type", ""), inst.id)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30.0)
            self._client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, connect=5.0))
        return self._client

    def _get(self, name: str) -> HostedEndpoint:
        ep = self._endpoints.get(name)
        if ep is None:
            raise EndpointNotFoundError(f"endpoint {name} not found")
        return ep

    def _folder(self, name: str) -> Path:
        return self.state_dir / name

    def _workers_of(self, ep: HostedEndpoint) -> list[Instance]:
        return [i for i in self._workers if i.deployment.id in ep.deployments and not i.exited()]

    def _prune(self) -> None:
        # In place: a start in flight holds this set as its registry (a new set would lose its instance).
        self._workers.difference_update([i for i in self._workers if i.exited()])

    def _info(self, ep: HostedEndpoint) -> EndpointInfo:
        dep = ep.deployment
        workers = sorted(self._workers_of(ep), key=lambda i: i.started_at)
        return EndpointInfo(
            ep.name, ep.status, (dep.model_version or dep.served_version) if dep else "",
            dep.model_artifact if dep else "", ep.desired, [i.describe() for i in workers], ep.created_at,
            ep.updated_at, ep.failure_reason, ep.autoscaling, ep.replacements,
            sum(1 for i in ep.instances if i.state == "InService" and not i.exited()),
            self.autoscaler.activities(ep.name))

    def _fail(self, ep: HostedEndpoint, reason: str):
        """A failed change: a new endpoint is Failed, an existing one keeps serving as it was."""
        ep.status = "InService" if ep.deployment is not None else "Failed"
        ep.failure_reason, ep.updated_at = reason, time.time()
        log.error("endpoint %s: %s", ep.name, reason)
        raise EndpointUpdateError(reason)

    async def _start(self, ep: HostedEndpoint, dep: Deployment, count: int) -> list[Instance]:
        """Start `count` instances in parallel: all of them pass /ping, or none is left running."""
        threads = self.threads_per_instance or max(1, (os.cpu_count() or 1) // max(1, ep.desired, count))
        folder = self._folder(ep.name) / "instances"
        results = await asyncio.gather(
            *(start_instance(dep, folder, self._http(), threads, self.ready_timeout, self.python, self._workers)
              for _ in range(count)), return_exceptions=True)
        started = [r for r in results if isinstance(r, Instance)]
        errors = [r for r in results if not isinstance(r, Instance)]
        if errors:
            await asyncio.gather(*(stop(i, grace=2.0) for i in started), return_exceptions=True)
            self._prune()
            raise errors[0]
        return started

    async def _scale(self, ep: HostedEndpoint, count: int) -> EndpointInfo:
        missing = count - len(ep.instances)
        if missing > 0:
            ep.status, ep.updated_at = "Updating", time.time()
            try:
                new = await self._start(ep, ep.deployment, missing)
            except Exception as exc:
                self._fail(ep, f"scaling {ep.name} to {count} instances failed: {exc}")
            ep.instances = ep.instances + new
        elif missing < 0:
            ep.status, ep.updated_at = "Updating", time.time()
            extra = sorted(ep.instances, key=lambda i: i.outstanding)[:-missing]
            ep.instances = [i for i in ep.instances if i not in extra]
            ep.desired = count
            await self._retire(extra)
        changed = missing != 0 or ep.desired != count or ep.status != "InService"
        ep.desired, ep.status = count, "InService"
        if changed:
            ep.updated_at = time.time()
        return self._info(ep)

    async def _retire(self, instances: list[Instance]) -> None:
        """Drain and stop instances already taken out of routing."""
        await asyncio.gather(*(drain_and_stop(i, self.drain_timeout) for i in instances), return_exceptions=True)
        self._prune()

    def _mark_dead(self, ep: HostedEndpoint, inst: Instance, why: str) -> None:
        if inst.state == "Failed":
            return
        log.warning("endpoint %s: instance %s (pid %s) cannot be reached (%s); replacing it",
                    ep.name, inst.id, inst.pid, why)
        inst.state = "Failed"
        ep.instances = [i for i in ep.instances if i is not inst]
        task = asyncio.get_running_loop().create_task(stop(inst, grace=1.0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._wake is not None:
            self._wake.set()

    async def _monitor(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.monitor_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self._check_instances()
            except Exception:
                log.exception("endpoint monitor failed; going on")

    def _check_instances(self) -> None:
        for ep in list(self._endpoints.values()):
            for inst in [i for i in ep.instances if i.exited()]:
                ep.instances = [i for i in ep.instances if i is not inst]
                inst.state = "Failed"
                log.warning("endpoint %s: instance %s (pid %s) exited unexpectedly with code %s; replacing it. "
                            "Log tail:\n%s", ep.name, inst.id, inst.pid, inst.process.returncode, inst.log_tail(5))
            if (ep.deployment is not None and len(ep.instances) < ep.desired and not ep.lock.locked()
                    and (ep.repair is None or ep.repair.done()) and time.monotonic() >= ep.next_repair):
                ep.repair = asyncio.create_task(self._repair(ep), name=f"repair-{ep.name}")
        self._prune()

    async def _repair(self, ep: HostedEndpoint) -> None:
        async with ep.lock:
            missing = ep.desired - len(ep.instances)
            if self._endpoints.get(ep.name) is not ep or ep.deployment is None or missing <= 0:
                return
            try:
                new = await self._start(ep, ep.deployment, missing)
            except Exception as exc:
                ep.repair_backoff = min(60.0, max(2.0, ep.repair_backoff * 2))
                ep.next_repair = time.monotonic() + ep.repair_backoff
                log.error("endpoint %s: replacing %d instance(s) failed, next try in %.0f s: %s",
                          ep.name, missing, ep.repair_backoff, exc)
                return
            ep.instances = ep.instances + new
            ep.replacements += len(new)
            ep.repair_backoff, ep.updated_at = 0.0, time.time()
            log.info("endpoint %s: %d replacement instance(s) in service: %s", ep.name, len(new),
                     ", ".join(i.id for i in new))
