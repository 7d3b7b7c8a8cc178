"""The Planning service on the local backend: what a run makes on this machine (the dataset in the
local store, a tuning job of subprocess trials, a registry version, the gateway's endpoint and
function), at no cost, and the checks this machine can fail: free disk under the state folder, CPU
cores for the parallel trials, and the gateway's caps on instances and provisioned environments.

Only reads: the gateway is asked about what it hosts only when it runs already, never started."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from backends.local.functions import LocalFunctions
from backends.local.gateway.client import GatewayConnection
from backends.local.gateway.instances import MAX_LOCAL_INSTANCES
from backends.local.hosting import LocalHosting
from backends.local.registry import LocalRegistry
from backends.local.state import LocalState
from backends.local.storage import LocalStorage
from backends.local.training import LocalTraining, request_digest
from backends.planning import (
    DatasetPlan, attempted, concurrency_check, plan_dataset, plan_weights, released_version_change,
)
from backends.requests import training_request, tuning_request
from backends.types import ModelVersion
from core.config import PipelineConfig
from core.costs import CostLine
from core.plan import Check, Plan, PlannedChange, change, differences

# Room for what a run writes besides the staged dataset: trial outputs, model artifacts, logs.
WORKING_MARGIN_BYTES = 512 * 1024**2
REGION = "this machine"


def _size(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


class LocalPlanning:
    """disk_usage: shutil.disk_usage (a test gives a small disk); cpus: local.cpus, else all."""

    def __init__(self, state: LocalState, storage: LocalStorage, registry: LocalRegistry, hosting: LocalHosting,
                 functions: LocalFunctions, gateway: GatewayConnection, cpus: int | None = None,
                 disk_usage: Callable = shutil.disk_usage, training: LocalTraining | None = None):
        self.state, self.storage, self.registry, self.hosting = state, storage, registry, hosting
        self.training = training
        self.functions, self.gateway = functions, gateway
        self.cpus, self.disk_usage = cpus, disk_usage

    def plan(self, config: PipelineConfig, release: ModelVersion | None = None) -> Plan:
        running = self.gateway.running()
        if release is None:  # a run that stages, trains and registers
            changes, checks, label, staged_bytes = self._training_changes(config)
        else:  # a rollback: serves a registered version again
            changes, checks, label, staged_bytes = [released_version_change(release)], [], release.label, None
        changes += self._serving_changes(config, label, running, checks)
        checks.append(concurrency_check(self.functions, config))
        if staged_bytes is not None:
            checks += [self._disk_check(staged_bytes), self._cores_check(config)]
        checks.append(self._instances_check(config))
        costs = [CostLine("everything", "the local backend runs on this machine", 0.0, "once")]
        return Plan("local", REGION, changes, costs, checks)

    def _training_changes(self, config: PipelineConfig) -> tuple[list[PlannedChange], list[Check], str, int]:
        """What staging, training and registering make, the checks they need, the version's label and the
        bytes staging copies."""
        names, training, checks = config.names, config.training, []
        bucket = self.storage.default_bucket()
        dataset = plan_dataset(config, self.storage, bucket, bucket_exists=True)
        checks.append(dataset.check)
        weights, weight_changes = plan_weights(config, self.storage, bucket, self.storage.store.exists, checks)
        changes = [dataset.change, *weight_changes]
        followed = attempted(checks, "training jobs", lambda: self._followed_job(config, bucket, dataset, weights), None)
        if followed is not None:
            kind, name, status, _ = followed
            changes.append(PlannedChange(kind, name, "keep", "completed with the same configuration: nothing new is "
                                         "trained" if status == "Completed" else "runs with the same configuration: "
                                         "the run attaches to it"))
        elif training.mode == "tuning":
            tuning = training.tuning
            changes.append(PlannedChange("tuning job", f"{names.tuning_job_prefix}-<run>", "create",
                                         f"{tuning.max_jobs} trials as subprocesses, {tuning.max_parallel_jobs} at a "
                                         f"time, sharing {self._cores()} cores"))
        else:
            changes.append(PlannedChange("training job", f"{names.training_job_prefix}-<run>", "create",
                                         f"a subprocess on {self._cores()} cores"))
        versions = self.registry.list_model_versions(names.model_group)
        trained_by = followed[3] if followed else None
        registered = next((v for v in versions if trained_by and v.job_name == trained_by), None)
        if registered is not None:
            label = registered.label
            changes.append(PlannedChange("model version", label, "keep", f"registered from {trained_by}"))
        else:
            label = f"{names.model_group}/{max((v.version for v in versions), default=0) + 1}"
            changes.append(PlannedChange("model version", label, "create", f"in {self.state.registry}; approved "
                                                                           "after its smoke test"))
        return changes, checks, label, dataset.bytes_to_stage

    def _serving_changes(self, config: PipelineConfig, label: str, running: bool,
                         checks: list[Check]) -> list[PlannedChange]:
        """The gateway, endpoint, autoscaling and function serving `label`."""
        names, changes = config.names, []
        changes.append(change("local gateway", "127.0.0.1", running, detail="" if running else
                              "started on a free port, left running after the run"))
        served = attempted(checks, "local endpoint", lambda: self._hosted("endpoints", names.endpoint, running), None)
        instances = min(config.hosting.initial_instance_count, MAX_LOCAL_INSTANCES)
        if served is None:
            changes.append(PlannedChange("endpoint", names.endpoint, "create",
                                         f"{instances} worker process(es) serving {label}"))
        elif served.get("model_version") == label:
            changes.append(PlannedChange("endpoint", names.endpoint, "keep", f"serves {label}"))
        else:
            changes.append(PlannedChange("endpoint", names.endpoint, "update",
                                         f"{served.get('model_version')} -> {label}, traffic shifted in steps"))
        scaling = config.autoscaling
        if scaling.enabled:
            top = min(scaling.max_capacity, MAX_LOCAL_INSTANCES)
            have = (served or {}).get("autoscaling") or {}
            changes.append(change("autoscaling", names.endpoint, bool(have),
                                  differences(have, {"min_capacity": scaling.min_capacity, "max_capacity": top}),
                                  detail=f"{scaling.min_capacity}..{top} instances"))
        hosted = attempted(checks, "local function", lambda: self._hosted("functions", names.function, running), None)
        changes.append(change("function", names.function, hosted is not None, [f"MODEL_VERSION -> {label}"],
                              detail="" if hosted else f"reserved {config.function.reserved_concurrency}, "
                                                       f"provisioned {config.function.provisioned_concurrency}"))
        return changes

    def _followed_job(self, config: PipelineConfig, bucket: str, dataset: DatasetPlan,
                      weights: str | None) -> tuple[str, str, str, str | None] | None:
        """The job of the same configuration digest a run would follow instead of training: (kind, name,
        status, the job whose model it registers), else None."""
        if self.training is None or dataset.uri is None:
            return None
        output, uri, checksum = config.names.jobs_uri(bucket), dataset.uri, dataset.checksum
        if config.training.mode == "tuning":
            found = self.training.tuning.find(request_digest(tuning_request(config, "", uri, output, weights, checksum)))
            if found is None:
                return None
            best = found.best.job_name if found.best else None
            return "tuning job", found.name, found.status, best
        job = self.training.jobs.find(request_digest(training_request(config, "", uri, output, weights, checksum)))
        return None if job is None else ("training job", job.name, job.status, job.name)

    def _hosted(self, kind: str, name: str, running: bool) -> dict | None:
        """The gateway's record of an endpoint or function ("endpoints", "functions"); None when it does not
        host it, or does not run (asking would start it)."""
        if not running:
            return None
        return next((item for item in self.gateway.client().status()[kind] if item["name"] == name), None)

    def _cores(self) -> int:
        return self.cpus or os.cpu_count() or 1

    def _disk_check(self, dataset_bytes: int) -> Check:
        free = self.disk_usage(str(self.state.home)).free
        need = dataset_bytes + WORKING_MARGIN_BYTES
        if free < need:
            return Check("free disk", "fail", f"{_size(free)} free under {self.state.home}, the run needs about "
                                              f"{_size(need)} (the dataset staged into the local store, models and "
                                              "logs): free space there or set local.home to a bigger disk")
        return Check("free disk", "pass", f"{_size(free)} free under {self.state.home}, about {_size(need)} needed")

    def _cores_check(self, config: PipelineConfig) -> Check:
        cores = self._cores()
        parallel = config.training.tuning.max_parallel_jobs if config.training.mode == "tuning" else 1
        if parallel > cores:
            return Check("CPU cores", "warn", f"{parallel} trials at once on {cores} cores: each gets one and they run "
                                              f"slower; lower training.tuning.max_parallel_jobs to {cores}")
        return Check("CPU cores", "pass", f"{parallel} job(s) at once on {cores} cores")

    @staticmethod
    def _instances_check(config: PipelineConfig) -> Check:
        """Every local instance is a process: the gateway caps an endpoint at MAX_LOCAL_INSTANCES (the
        function's provisioned environments are concurrency_check's)."""
        hosting, scaling, cap = config.hosting, config.autoscaling, MAX_LOCAL_INSTANCES
        if hosting.initial_instance_count > cap:
            return Check("local instances", "fail", f"hosting.initial_instance_count {hosting.initial_instance_count} "
                                                    f"is over the local cap of {cap} instances per endpoint: lower it "
                                                    "for local runs")
        if scaling.enabled and scaling.max_capacity > cap:
            return Check("local instances", "warn", f"autoscaling.max_capacity {scaling.max_capacity} is over the "
                                                    f"local cap of {cap}: the local endpoint scales to {cap} at most")
        top = scaling.max_capacity if scaling.enabled else hosting.initial_instance_count
        return Check("local instances", "pass", f"at most {top} of the local cap of {cap}")
