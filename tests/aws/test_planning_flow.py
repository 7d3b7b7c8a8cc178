"""The aws plan on moto around a real train_and_deploy: before the first run it creates everything;
after it, the same configuration keeps everything (the tuning job of the same digest is followed, so
the model is the same); a changed training seed tunes again and updates the endpoint blue/green.

One flow run for the module (about 40 s); moto's gaps are answered as in tests/aws/test_aws_flow.py."""
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

import flows.train_and_deploy as pipeline
from backends.aws.backend import AwsBackend
from tests.aws.fakes import demo_on_aws, pipeline_fakes

REGION = "us-east-1"
EVERY_KIND = ["S3 bucket", "dataset", "IAM role", "IAM role", "tuning job", "model package group", "model version",
              "model", "endpoint config", "endpoint", "CloudWatch alarm", "CloudWatch alarm", "scalable target",
              "scaling policy", "Lambda function", "function version", "function alias", "reserved concurrency",
              "provisioned concurrency"]


@pytest.fixture(scope="module")
def history(prefect_api, tiny_dataset):
    with mock_aws(), pytest.MonkeyPatch.context() as patch:
        session = boto3.Session(region_name=REGION)
        pipeline_fakes(session.events)
        config = demo_on_aws(tiny_dataset)
        reseeded = demo_on_aws(tiny_dataset, seed=config.training.seed + 1)

        def backend_for(name, cfg):
            return AwsBackend(session, cfg.project, cfg.stage, poll_seconds=0, role_propagation_s=0)

        def plan(cfg):
            backend = backend_for("aws", cfg)
            try:
                return backend.planning.plan(cfg)
            finally:
                backend.close()

        patch.setattr(pipeline, "get_backend", backend_for)
        first = plan(config)
        result = pipeline.train_and_deploy(config)
        again, reseeded_plan = plan(config), plan(reseeded)
        # The staged data as an s3:// source trained in place: the same content is the same job; an object
        # changed under the same URI is new data, which a re-run must not answer with the old job's model.
        in_place = config.model_copy(update={"data": config.data.model_copy(update={"source": result.dataset_uri})})
        in_place_same = plan(in_place)
        bucket, _, prefix = result.dataset_uri.removeprefix("s3://").partition("/")
        s3 = session.client("s3")
        key = next(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/train/")["Contents"])
        s3.put_object(Bucket=bucket, Key=key, Body=b"a changed image", ChecksumAlgorithm="SHA256")
        yield SimpleNamespace(config=config, first=first, result=result, again=again, reseeded=reseeded_plan,
                              in_place_same=in_place_same, in_place_changed=plan(in_place), session=session)


def by_kind(plan, kind):
    return [c for c in plan.changes if c.kind == kind]


def one(plan, kind):
    [found] = by_kind(plan, kind)
    return found


def test_a_first_plan_creates_everything(history):
    plan, names = history.first, history.config.names
    assert [c.kind for c in plan.changes] == EVERY_KIND
    assert {c.action for c in plan.changes} == {"create"}
    assert one(plan, "endpoint").name == names.endpoint and one(plan, "Lambda function").name == names.function
    assert one(plan, "model version").name == f"{names.model_group}/1"
    assert [c.name for c in by_kind(plan, "IAM role")] == [names.role("sagemaker"), names.role("lambda")]
    assert plan.failed == []
    costs = {c.item: c.amount for c in plan.costs}
    assert costs["training (expected)"] == pytest.approx(2 * 1.0 * 0.23)  # 2 jobs x 1 h x ml.m5.xlarge


def test_the_same_configuration_after_a_run_keeps_everything(history):
    plan, result = history.again, history.result
    assert [c.kind for c in plan.changes] == EVERY_KIND
    assert {c.kind: c.action for c in plan.changes if c.action != "keep"} == {}
    tuning_jobs = boto3.client("sagemaker", region_name=REGION).list_hyper_parameter_tuning_jobs()
    [job] = tuning_jobs["HyperParameterTuningJobSummaries"]
    assert one(plan, "tuning job").name == job["HyperParameterTuningJobName"]  # followed, not started again
    assert one(plan, "model version").name == f"{result.model_group}/{result.model_version}"
    assert one(plan, "endpoint").detail == f"serves {result.model_group}/{result.model_version}"
    assert one(plan, "function version").name == f"{result.function_name}:1"
    # Nothing new is trained: the run costs no training; the endpoint is kept as it is.
    assert [(c.item, c.amount) for c in plan.costs if c.item.startswith("training")] == [("training", 0.0)]
    assert next(c for c in plan.checks if c.name == "existing endpoint").status == "pass"


def test_a_changed_seed_tunes_again_and_updates_the_endpoint(history):
    plan, names = history.reseeded, history.config.names
    actions = {c.kind: c.action for c in plan.changes}
    assert actions == {
        "S3 bucket": "keep", "dataset": "keep", "IAM role": "keep", "tuning job": "create",
        "model package group": "keep", "model version": "create", "model": "create", "endpoint config": "create",
        "endpoint": "update", "CloudWatch alarm": "keep", "scalable target": "keep", "scaling policy": "keep",
        "Lambda function": "update", "function version": "create", "function alias": "update",
        "reserved concurrency": "keep", "provisioned concurrency": "keep"}
    assert one(plan, "model version").name == f"{names.model_group}/2"
    assert one(plan, "endpoint").detail.startswith(f"blue/green: model {names.model_group}/1 -> {names.model_group}/2")
    assert one(plan, "Lambda function").detail == "changes Environment"  # MODEL_VERSION of the new release
    assert one(plan, "function alias").detail == "1 -> the new version"
    warning = next(c for c in plan.checks if c.name == "existing endpoint")
    assert warning.status == "warn" and f"{names.endpoint} serves {names.model_group}/1 now" in warning.message
    assert {c.item for c in plan.costs} >= {"training (expected)", "training (at most)"}


def test_staged_data_as_the_source_follows_its_job_until_an_object_changes(history):
    assert one(history.in_place_same, "tuning job").action == "keep"
    changed = history.in_place_changed
    assert one(changed, "tuning job").action == "create"
    [data] = [c for c in changed.checks if c.name == "data"]
    assert data.status == "fail" and "changed" in data.message

