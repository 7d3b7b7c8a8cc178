"""The train_and_deploy flow on the local backend, end to end, through Prefect."""
import base64
import json
import time
from dataclasses import dataclass, field

import boto3
import pytest
from botocore.exceptions import ClientError

import flows.train_and_deploy as pipeline
from backends.local.backend import LocalBackend
from backends.local.gateway.server import running_gateway
from core.config import PipelineConfig
from core.demo import demo_config
from flows.teardown import teardown
from flows.train_and_deploy import train_and_deploy  # the programmatic way in, as DESIGN.md shows

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=3)]


def tiny_config(home, data_dir) -> PipelineConfig:
    values = demo_config(str(data_dir)).model_dump(mode="json")
    values["training"]["epochs"] = 1
    values["training"]["tuning"].update(max_jobs=2, max_parallel_jobs=2)
    values["function"].update(reserved_concurrency=4, provisioned_concurrency=1)
    values["local"] = {"home": str(home)}
    return PipelineConfig.model_validate(values)


def read_artifacts(flow_run_id) -> dict[str, tuple[str, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: (a.type, str(a.data)) for a in found}


def test_pipeline_end_to_end_then_again(prefect_api, tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("INFERENCE_GRAPH", raising=False)  # the endpoint serves its default form, as a user's does
    config = tiny_config(tmp_path / "home", tiny_dataset)
    try:
        state = train_and_deploy(config, return_state=True)
        first = state.result()
        assert first.model_version == 1 and first.backend == "local"
        worker_logs = "".join(p.read_text() for p in (tmp_path / "home" / "gateway" / "endpoints").rglob("i-*.log"))
        assert "with torchscript fp32" in worker_logs
        assert set(first.step_seconds) >= {"stage_dataset", "tune_hyperparameters", "deploy_endpoint", "smoke_test"}

        image = next((tiny_dataset / "test").rglob("*.png")).read_bytes()
        runtime = boto3.client("sagemaker-runtime", endpoint_url=first.aws_endpoint_url, region_name="us-east-1")
        answer = json.loads(runtime.invoke_endpoint(EndpointName=first.endpoint_name, ContentType="image/png",
                                                    Body=image)["Body"].read())
        assert answer["model_version"] == f"{first.model_group}/1" and len(answer["predictions"]) == 3
        lam = boto3.client("lambda", endpoint_url=first.aws_endpoint_url, region_name="us-east-1")
        reply = json.loads(lam.invoke(FunctionName=first.function_name,
                                      Payload=json.dumps({"image": base64.b64encode(image).decode()}))["Payload"].read())
        assert reply["statusCode"] == 200 and json.loads(reply["body"])["predictions"]

        found = read_artifacts(state.state_details.flow_run_id)
        kinds = {key: kind for key, (kind, _) in found.items()}
        for key, kind in [("demo-dataset", "markdown"), ("demo-trials", "table"), ("best-trial-epochs", "table"),
                          ("best-trial-training-curve", "markdown"), ("demo-endpoint-summary", "markdown"),
                          ("demo-model-versions", "table"), ("smoke-test", "table"), ("demo-tuning-progress", "progress"),
                          ("demo-staging-progress", "progress"), ("demo-tuning", "markdown")]:
            assert kinds.get(key) == kind, (key, kinds)
        assert float(found["demo-tuning-progress"][1]) == 100.0
        assert "data:image/png;base64," in found["best-trial-training-curve"][1]
        assert first.endpoint_invoke_url in found["demo-endpoint"][1]  # link artifacts are stored as markdown
        assert first.function_invoke_url in found["demo-function"][1]

        # Run again with nothing changed: the finished tuning job is found again, nothing is trained
        # or deployed twice, and version 1 still serves.
        again = train_and_deploy(config)
        assert again.model_version == 1 and again.job_name == first.job_name
        assert 0 < again.smoke_test_p50_ms < 5000 and again.step_seconds["tune_hyperparameters"] < 30

        changed = config.model_copy(update={"training": config.training.model_copy(update={"seed": 1})})
        second = train_and_deploy(changed)
        assert second.model_version == 2 and second.job_name != first.job_name
        backend = LocalBackend(home=config.local.home)
        status = backend.gateway.client().status()
        assert [e["name"] for e in status["endpoints"]] == [first.endpoint_name]
        assert status["endpoints"][0]["model_version"] == f"{first.model_group}/2"
        assert status["endpoints"][0]["autoscaling"]["max_capacity"] == 4
        assert [f["name"] for f in status["functions"]] == [first.function_name]
        versions = backend.registry.list_model_versions(first.model_group)
        assert [v.version for v in versions] == [1, 2] and [v.champion for v in versions] == [False, True]
        assert versions[0].dataset_checksum == versions[1].dataset_checksum
    finally:
        report = teardown(config)
    assert f"endpoint {first.endpoint_name}" in report.removed and f"function {first.function_name}" in report.removed
    assert running_gateway(LocalBackend(home=config.local.home).state) is None
    assert [v.version for v in LocalBackend(home=config.local.home).registry.list_model_versions(first.model_group)] == [1, 2]


@dataclass
class FaultyService:
    """A real service whose `method` fails `times` times first with `error` (after=True: the call is
    made and succeeds, then its answer is lost)."""

    inner: object
    method: str
    error: Exception
    times: int
    after: bool = False
    calls: int = 0
    results: list = field(default_factory=list)

    def __getattr__(self, name):
        target = getattr(self.inner, name)
        if name != self.method:
            return target

        def flaky(*args, **kwargs):
            self.calls += 1
            if self.calls > self.times:
                self.results.append(target(*args, **kwargs))
                return self.results[-1]
            if self.after:
                self.results.append(target(*args, **kwargs))
            raise self.error

        return flaky


def with_faulty_hosting(backend: LocalBackend, method: str, error: Exception, times: int) -> FaultyService:
    """`backend`, its hosting service's `method` failing `times` times first."""
    backend.hosting = FaultyService(backend.hosting, method, error, times)
    return backend.hosting


def throttling(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
                        "ResponseMetadata": {"HTTPStatusCode": 400}}, operation)


def test_transient_fault_is_retried_and_permanent_fails_at_once(prefect_api, tiny_dataset, tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "home", tiny_dataset)
    config = config.model_copy(update={"training": config.training.model_copy(update={"mode": "instance"})})
    backend = LocalBackend(home=config.local.home)
    faulty = with_faulty_hosting(backend, "deploy_endpoint", throttling("CreateEndpoint"), times=2)
    # The training job completes, then its answer is lost: the retry must attach to it, not train again.
    lost = FaultyService(backend.training, "run_training_job", ConnectionResetError("connection reset by peer"),
                         times=1, after=True)
    backend.training = lost
    monkeypatch.setattr(pipeline, "get_backend", lambda name, cfg: backend)
    try:
        result = train_and_deploy(config)
        assert faulty.calls == 3 and lost.calls == 2 and result.model_version == 1
        jobs = [p for p in (tmp_path / "home" / "jobs").iterdir()]
        assert [p.name for p in jobs] == [result.job_name]  # one job, trained once
        assert json.loads((jobs[0] / "job.json").read_text())["status"] == "Completed"
        first, retried = lost.results
        assert retried == first  # the same job's record, not a second training (its timings would differ)
        assert backend.hosting.describe_endpoint(config.names.endpoint).model_version == f"{result.model_group}/1"

        refused = ClientError({"Error": {"Code": "ValidationException", "Message": "Instance type ml.bogus is not supported"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "CreateEndpointConfig")
        backend = LocalBackend(home=config.local.home)
        permanent = with_faulty_hosting(backend, "deploy_endpoint", refused, times=5)
        monkeypatch.setattr(pipeline, "get_backend", lambda name, cfg: backend)
        started = time.perf_counter()
        with pytest.raises(ClientError, match="Instance type ml.bogus is not supported"):
            train_and_deploy(config)
        assert permanent.calls == 1 and time.perf_counter() - started < 120
    finally:
        monkeypatch.undo()
        teardown(config)


def test_bad_dataset_fails_before_training_with_what_to_fix(prefect_api, tmp_path):
    (tmp_path / "images" / "train" / "cat").mkdir(parents=True)
    config = tiny_config(tmp_path / "home", tmp_path / "images")
    with pytest.raises(Exception, match=r"has no valid/, test/: a dataset holds train/, valid/ and test/"):
        train_and_deploy(config)
    assert not list((tmp_path / "home" / "jobs").iterdir())
