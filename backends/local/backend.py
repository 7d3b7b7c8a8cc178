"""The local backend: everything on this machine, offline, behind the Backend interface.

Storage is the local store (s3:// URIs under the state folder), training and tuning run
training/train.py in subprocesses, the registry is a folder, and endpoints and functions
live in the local gateway, started on first need and left running after the flow so the
user can keep calling them.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from backends.base import (
    Backend, EndpointState, FunctionState, ModelVersion, ScalingState, StagedDataset, TrainingOutcome,
    TrainingRequest, TrialSummary, TuningOutcome, TuningRequest,
)
from backends.local.gateway.client import GatewayClient
from backends.local.gateway.server import ensure_gateway, running_gateway
from backends.local.registry import LocalRegistry
from backends.local.state import DEFAULT_BUCKET, LocalState
from backends.local.store import LocalStore
from backends.local.training_jobs import LocalTrainingJobs, TrainingJobSpec
from backends.local.tuning import LocalTuning, TuningJobSpec
from backends.session import local_session, make_client
from core.config import AutoscalingConfig, FunctionConfig, HostingConfig
from core.datasets import manifest_checksum
from core.metrics import METRIC_DEFINITIONS
from core.scaling import resource_id, scalable_target, target_tracking_policy
from core.uris import parse_s3_uri

LAMBDA_SOURCE_DIR = Path(__file__).resolve().parents[2] / "lambda_src"


class LocalBackend(Backend):
    name = "local"

    def __init__(self, home: str | None = None, cpus: int | None = None):
        self.state = LocalState.resolve(home)
        self.cpus = cpus
        self.store = LocalStore(self.state.store)
        self.jobs = LocalTrainingJobs(self.state, self.store)
        self.tuning = LocalTuning(self.state, self.jobs)
        self.registry = LocalRegistry(self.state.registry)
        self._gateway_client: GatewayClient | None = None

    # -- the gateway, started on first need --------------------------------------
    def gateway(self) -> GatewayClient:
        if self._gateway_client is None or running_gateway(self.state) is None:
            self._gateway_client = GatewayClient(ensure_gateway(self.state).url)
        return self._gateway_client

    def aws_client(self, service: str):
        return make_client(local_session(), service, endpoint_url=self.gateway().url)

    # -- storage --------------------------------------------------------------------
    def default_bucket(self) -> str:
        return DEFAULT_BUCKET

    def upload_folder(self, folder, prefix_uri, progress=None) -> StagedDataset:
        result = self.store.sync_folder(folder, prefix_uri, progress=progress)
        return StagedDataset(result.uri, result.uploaded + result.unchanged, result.uploaded, result.unchanged,
                             result.total_bytes, result.manifest_sha256)

    def describe_prefix(self, prefix_uri: str) -> StagedDataset:
        keys = self.store.list(prefix_uri)
        if not keys:
            raise FileNotFoundError(f"nothing is stored under {prefix_uri} in the local store ({self.state.store})")
        prefix = parse_s3_uri(prefix_uri)
        heads = {key: self.store.head(prefix.join(key).uri) or {} for key in keys}
        checksum = manifest_checksum({key: head.get("sha256", "") for key, head in heads.items()})
        total = sum(head.get("size", 0) for head in heads.values())
        return StagedDataset(prefix.uri, len(keys), 0, len(keys), total, checksum)

    def upload_file(self, path: str, uri: str) -> str:
        self.store.put_file(path, uri)
        return uri

    def list_objects(self, prefix_uri: str) -> list[str]:
        return self.store.list(prefix_uri)

    def read_object(self, uri: str) -> bytes:
        path = self.store.path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"no object at {uri}")
        return path.read_bytes()

    # -- training -------------------------------------------------------------------
    def _inputs(self, dataset_uri: str, pretrained_uri: str | None) -> dict[str, str]:
        inputs = {"training": dataset_uri}
        if pretrained_uri:
            inputs["pretrained"] = pretrained_uri.rsplit("/", 1)[0] if not self.store.path(pretrained_uri).is_dir() else pretrained_uri
        return inputs

    def run_training_job(self, request: TrainingRequest, on_log=None, on_epoch=None) -> TrainingOutcome:
        hyperparameters = dict(request.hyperparameters)
        if request.pretrained_uri and not self.store.path(request.pretrained_uri).is_dir():
            hyperparameters["pretrained-file"] = request.pretrained_uri.rsplit("/", 1)[1]
        spec = TrainingJobSpec(request.job_name, hyperparameters, self._inputs(request.dataset_uri, request.pretrained_uri),
                               request.output_uri, cpus=self.cpus, max_runtime_seconds=request.max_runtime_seconds,
                               metric_definitions=list(METRIC_DEFINITIONS))
        result = self.jobs.run(spec, on_log=on_log,
                               on_metrics=(lambda m: on_epoch(m) if "epoch" in m else None) if on_epoch else None)
        return TrainingOutcome(result.name, result.status, result.hyperparameters, result.failure_reason,
                               result.final_metrics, result.epochs, result.model_artifact, result.log_path,
                               result.duration_seconds)

    def run_tuning_job(self, request: TuningRequest, on_trial=None) -> TuningOutcome:
        static = dict(request.static_hyperparameters)
        if request.pretrained_uri and not self.store.path(request.pretrained_uri).is_dir():
            static["pretrained-file"] = request.pretrained_uri.rsplit("/", 1)[1]
        spec = TuningJobSpec(
            request.job_name, static, request.parameter_ranges, self._inputs(request.dataset_uri, request.pretrained_uri),
            request.output_uri, request.objective_metric, request.objective_type, request.strategy, request.max_jobs,
            request.max_parallel_jobs, self.cpus, request.max_runtime_seconds, request.seed)
        result = self.tuning.run(spec, on_trial=(lambda t, done, total: on_trial(_trial(t), done, total)) if on_trial else None)
        return TuningOutcome(result.name, result.status, result.objective_metric, result.objective_type,
                             [_trial(t) for t in result.trials], result.failure_reason)

    # -- model registry -------------------------------------------------------------
    def register_model_version(self, group, model_artifact, metrics, hyperparameters, dataset_checksum, job_name):
        return self.registry.register(group, model_artifact, metrics, hyperparameters, dataset_checksum, job_name)

    def list_model_versions(self, group: str) -> list[ModelVersion]:
        return self.registry.list(group)

    def promote_model_version(self, group: str, version: int) -> ModelVersion:
        return self.registry.promote(group, version)

    # -- endpoints ------------------------------------------------------------------
    def deploy_endpoint(self, name: str, model: ModelVersion, hosting: HostingConfig) -> EndpointState:
        info = self.gateway().put_endpoint(name, str(self.store.path(model.model_artifact)), hosting.initial_instance_count,
                                           model.label, {"TOP_K": str(hosting.top_k)})
        return self._endpoint_state(info, hosting.variant_name)

    def describe_endpoint(self, name: str) -> EndpointState | None:
        if running_gateway(self.state) is None:
            return None
        info = next((e for e in self.gateway().status()["endpoints"] if e["name"] == name), None)
        return self._endpoint_state(info, "AllTraffic") if info else None

    def _endpoint_state(self, info: dict, variant: str) -> EndpointState:
        url = f"{self.gateway().url}/endpoints/{info['name']}/invocations"
        return EndpointState(info["name"], info["status"], info["model_version"], info["instance_count"], variant, url)

    def delete_endpoint(self, name: str) -> bool:
        return running_gateway(self.state) is not None and self.gateway().delete_endpoint(name)

    # -- autoscaling ----------------------------------------------------------------
    def register_autoscaling(self, endpoint_name: str, variant_name: str, config: AutoscalingConfig) -> ScalingState:
        target = scalable_target(endpoint_name, variant_name, config)
        policy = target_tracking_policy(endpoint_name, variant_name, config)
        self.gateway().set_autoscaling(endpoint_name, {
            "min_capacity": target["MinCapacity"], "max_capacity": target["MaxCapacity"], "policy": policy})
        return ScalingState(resource_id(endpoint_name, variant_name), config.min_capacity, config.max_capacity, policy)

    def deregister_autoscaling(self, endpoint_name: str, variant_name: str) -> bool:
        if running_gateway(self.state) is None:
            return False
        endpoints = {e["name"]: e for e in self.gateway().status()["endpoints"]}
        if not endpoints.get(endpoint_name, {}).get("autoscaling"):
            return False
        self.gateway().set_autoscaling(endpoint_name, None)
        return True

    # -- functions ------------------------------------------------------------------
    def publish_function(self, name: str, endpoint_name: str, config: FunctionConfig) -> FunctionState:
        environment = {"ENDPOINT_NAME": endpoint_name, "ALLOWED_URL_HOSTS": ",".join(config.allowed_url_hosts)}
        info = self.gateway().put_function(name, str(LAMBDA_SOURCE_DIR), "handler.lambda_handler", environment,
                                           config.memory_mb, config.timeout_seconds, config.reserved_concurrency,
                                           config.provisioned_concurrency)
        return FunctionState(info["name"], info.get("arn", ""), info["reserved_concurrency"], info["provisioned_concurrency"],
                             f"{self.gateway().url}/2015-03-31/functions/{name}/invocations", info.get("code_sha256", ""))

    def delete_function(self, name: str) -> bool:
        return running_gateway(self.state) is not None and self.gateway().delete_function(name)

    def close(self) -> None:
        if self._gateway_client is not None:
            self._gateway_client.close()
            self._gateway_client = None


def _trial(t) -> TrialSummary:
    data = asdict(t)
    return TrialSummary(data["index"], data["name"], data["status"], data["tuned_hyperparameters"], data["objective"],
                        data["failure_reason"], data["final_metrics"], data["model_artifact"], data["duration_seconds"],
                        data.get("epochs", []))
