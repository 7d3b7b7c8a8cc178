"""The whole train_and_deploy flow on the aws backend, against moto.

moto plays S3, IAM, SageMaker (tuning jobs, training jobs, models, endpoint configs, endpoints,
model packages), Application Auto Scaling and Lambda. What it lacks is answered in-process
(tests/aws/fakes.py): UpdateEndpoint, ListTrainingJobsForHyperParameterTuningJob, provisioned
concurrency, and Lambda Invoke (moto would run the code in Docker, which this machine lacks).
"""
import json
from collections import Counter

import boto3
import pytest
from botocore.exceptions import ConnectionClosedError
from moto import mock_aws

import flows.rollback as rollback_flow
import flows.teardown as teardown_flow
import flows.train_and_deploy as pipeline
from backends.aws.backend import AwsBackend
from tests.aws.fakes import answer, demo_on_aws, pipeline_fakes

REGION = "us-east-1"


class SentCalls:
    """Every request sent towards AWS (moto), by operation, botocore's own resends included; a call a
    test answers before it is sent (a `before-call` fault) is not one. moto overwrites a second create
    of some resources, so a count of what exists cannot tell whether a create was made twice: this can."""

    def __init__(self, events):
        self.sent: Counter = Counter()
        events.register("before-send", self._record)

    def _record(self, event_name, **_):
        self.sent[event_name.rsplit(".", 1)[-1]] += 1


@pytest.fixture
def aws_world(monkeypatch, prefect_api, tiny_dataset):
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        fakes = pipeline_fakes(session.events)
        fakes["sent"] = SentCalls(session.events)
        config = demo_on_aws(tiny_dataset)

        def backend_for(name, cfg):
            assert name == "aws"
            return AwsBackend(session, cfg.project, cfg.stage, poll_seconds=0, role_propagation_s=0)

        monkeypatch.setattr(pipeline, "get_backend", backend_for)
        monkeypatch.setattr(teardown_flow, "get_backend", backend_for)
        monkeypatch.setattr(rollback_flow, "get_backend", backend_for)
        yield session, config, fakes


def clients(session):
    return {name: session.client(name, region_name=REGION)
            for name in ("s3", "sagemaker", "lambda", "application-autoscaling", "iam")}


def test_flow_on_aws_then_again_then_teardown(aws_world):
    session, config, fakes = aws_world
    c = clients(session)
    names = config.names

    first = pipeline.train_and_deploy(config)

    assert first.backend == "aws" and first.model_version == 1
    assert first.endpoint_invoke_url == f"https://runtime.sagemaker.{REGION}.amazonaws.com/endpoints/{names.endpoint}/invocations"
    bucket = first.dataset_uri.split("/")[2]
    dataset_prefix = first.dataset_uri.split("/", 3)[3]
    manifest = json.loads(c["s3"].get_object(Bucket=bucket, Key=f"{dataset_prefix}/_manifest.json")["Body"].read())
    assert manifest["complete"] and len(manifest["files"]) == 100

    tuning = fakes["sagemaker"].tuning_jobs[0]
    assert tuning["HyperParameterTuningJobConfig"]["Strategy"] == "Bayesian"
    assert tuning["HyperParameterTuningJobConfig"]["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 2,
                                                                         "MaxParallelTrainingJobs": 2}
    ranges = tuning["HyperParameterTuningJobConfig"]["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"][0]["Name"] == "learning-rate"
    assert ranges["ContinuousParameterRanges"][0]["ScalingType"] == "Logarithmic"
    definition = tuning["TrainingJobDefinition"]
    assert {d["Name"] for d in definition["AlgorithmSpecification"]["MetricDefinitions"]} >= {"valid_loss", "test_accuracy"}
    assert definition["RoleArn"].endswith(f":role/{config.project}-{config.stage}-sagemaker")

    # The best trial (lowest valid_loss: the second) is registered, approved and serving.
    assert first.job_name.endswith("-002-00000002")
    packages = c["sagemaker"].list_model_packages(ModelPackageGroupName=names.model_group)["ModelPackageSummaryList"]
    assert [p["ModelApprovalStatus"] for p in packages] == ["Approved"]
    endpoint = c["sagemaker"].describe_endpoint(EndpointName=names.endpoint)
    assert endpoint["EndpointStatus"] == "InService"

    target = c["application-autoscaling"].describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in target] == [(1, 4)]
    policy = c["application-autoscaling"].describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 10.0

    function = c["lambda"].get_function(FunctionName=names.function)
    assert function["Configuration"]["Environment"]["Variables"]["ENDPOINT_NAME"] == names.endpoint
    assert function["Concurrency"]["ReservedConcurrentExecutions"] == 10
    assert c["lambda"].get_alias(FunctionName=names.function, Name="live")["FunctionVersion"] == "1"
    assert fakes["provisioned"].puts[-1]["ProvisionedConcurrentExecutions"] == 2
    assert fakes["invoke"].invocations and set(fakes["invoke"].invocations) == {names.function}

    lambda_role = f"{config.project}-{config.stage}-lambda"
    document = c["iam"].get_role_policy(RoleName=lambda_role, PolicyName="sagemaker-flows-invoke-endpoint")["PolicyDocument"]
    invoke = [s for s in document["Statement"] if "sagemaker:InvokeEndpoint" in json.dumps(s["Action"])]
    assert [s["Resource"] for s in invoke] in (
        [f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{names.endpoint}"],
        [[f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{names.endpoint}"]])

    same = pipeline.train_and_deploy(config)  # a new flow run of the same configuration: nothing is tuned again

    assert same.model_version == 1 and same.job_name == first.job_name
    assert len(fakes["sagemaker"].tuning_jobs) == 1
    reseeded = config.model_copy(update={"training": config.training.model_copy(update={"seed": 1})})
    second = pipeline.train_and_deploy(reseeded)

    assert len(fakes["sagemaker"].tuning_jobs) == 2
    assert second.model_version == 2
    assert len(c["sagemaker"].list_endpoints()["Endpoints"]) == 1
    update = fakes["sagemaker"].updates[-1]
    assert update["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"] == "ALL_AT_ONCE"
    assert [a["AlarmName"] for a in update["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]] == [
        f"{names.endpoint}-5xx-errors", f"{names.endpoint}-model-latency"]  # SageMaker rolls back on them
    assert len(c["lambda"].list_functions()["Functions"]) == 1
    versions = c["lambda"].list_versions_by_function(FunctionName=names.function)["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1", "2"]  # one function version per model release
    assert versions[2]["Environment"]["Variables"]["MODEL_VERSION"] == f"{names.model_group}/2"
    assert c["lambda"].get_alias(FunctionName=names.function, Name="live")["FunctionVersion"] == "2"
    assert len(c["application-autoscaling"].describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]) == 1
    packages = c["sagemaker"].list_model_packages(ModelPackageGroupName=names.model_group)["ModelPackageSummaryList"]
    assert sorted(p["ModelApprovalStatus"] for p in packages) == ["Approved", "Rejected"]
    assert set(fakes["invoke"].qualifiers) == {"live"}  # the smoke test goes through the alias

    back = rollback_flow.rollback(config, 1)

    assert back.serving == f"{names.model_group}/1"
    assert c["lambda"].get_alias(FunctionName=names.function, Name="live")["FunctionVersion"] == "1"  # moved back
    versions = c["lambda"].list_versions_by_function(FunctionName=names.function)["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1", "2"]  # no new version for an old release
    by_version = {p["ModelPackageVersion"]: p["ModelApprovalStatus"] for p in
                  (c["sagemaker"].describe_model_package(ModelPackageName=s["ModelPackageArn"]) for s in
                   c["sagemaker"].list_model_packages(ModelPackageGroupName=names.model_group)["ModelPackageSummaryList"])}
    assert by_version == {1: "Approved", 2: "Rejected"}

    report = teardown_flow.teardown(config)

    assert f"endpoint {names.endpoint}" in report.removed and f"function {names.function}" in report.removed
    assert c["sagemaker"].list_endpoints()["Endpoints"] == []
    assert c["sagemaker"].list_endpoint_configs()["EndpointConfigs"] == []
    assert c["sagemaker"].list_models()["Models"] == []
    assert c["lambda"].list_functions()["Functions"] == []
    assert session.client("cloudwatch", region_name=REGION).describe_alarms()["MetricAlarms"] == []  # its rollback alarms
    assert c["application-autoscaling"].describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert [r["RoleName"] for r in c["iam"].list_roles()["Roles"] if r["RoleName"].startswith(config.project)] == []
    # Registered models stay.
    assert len(c["sagemaker"].list_model_packages(ModelPackageGroupName=names.model_group)["ModelPackageSummaryList"]) == 2


TRANSIENT = {
    "s3.PutObject": "SlowDown",
    "iam.PutRolePolicy": "Throttling",
    "sagemaker.CreateHyperParameterTuningJob": "ThrottlingException",
    "sagemaker.CreateModelPackage": "ThrottlingException",
    "sagemaker.CreateEndpoint": "ResourceInUse",
    "application-auto-scaling.RegisterScalableTarget": "ConcurrentUpdateException",
    "lambda.CreateFunction": "ServiceUnavailable",
}


def test_transient_errors_in_every_kind_of_call_are_retried(aws_world):
    session, config, fakes = aws_world
    failed: dict[str, int] = {}

    def fail_once(event_name, **_):
        operation = event_name.split(".", 1)[1]
        if operation in failed:
            return None
        failed[operation] = 1
        code = TRANSIENT[operation]
        status = 503 if code in ("ServiceUnavailable", "SlowDown") else 400
        return answer(status, {"Error": {"Code": code, "Message": f"injected {code}"}})

    for operation in TRANSIENT:
        service, name = operation.split(".")
        session.events.register(f"before-call.{service}.{name}", fail_once)

    result = pipeline.train_and_deploy(config)

    assert result.model_version == 1
    assert sorted(failed) == sorted(TRANSIENT)  # every kind of call failed once, and the flow still completed
    assert_one_of_each(session, config, fakes["sent"])


# The creates of the resources below: each sent once, however many times a step was retried.
CREATES = ("CreateHyperParameterTuningJob", "CreateModel", "CreateEndpointConfig", "CreateEndpoint",
           "CreateModelPackage", "CreateFunction", "PublishVersion", "CreateAlias")


def assert_one_of_each(session, config, sent: SentCalls):
    """Exactly one of every resource the pipeline makes, each created by one request, however many
    times a call was retried."""
    assert {op: sent.sent[op] for op in CREATES} == dict.fromkeys(CREATES, 1)
    c, names = clients(session), config.names
    sagemaker = c["sagemaker"]
    assert len(sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"]) == 1
    assert [e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]] == [names.endpoint]
    assert len(sagemaker.list_endpoint_configs()["EndpointConfigs"]) == 1
    assert len(sagemaker.list_models()["Models"]) == 1
    assert len(sagemaker.list_model_packages(ModelPackageGroupName=names.model_group)["ModelPackageSummaryList"]) == 1
    assert [f["FunctionName"] for f in c["lambda"].list_functions()["Functions"]] == [names.function]
    versions = c["lambda"].list_versions_by_function(FunctionName=names.function)["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1"]
    assert [a["Name"] for a in c["lambda"].list_aliases(FunctionName=names.function)["Aliases"]] == ["live"]
    autoscaling = c["application-autoscaling"]
    assert len(autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]) == 1
    assert len(autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]) == 1


# Calls whose answer is lost after AWS acted (the connection drops on the way back): a retry must
# find what the first attempt made, never make a second one. A lost answer costs its task one of
# its four attempts, so no task loses more than three here (CreateAlias and provisioned concurrency
# are covered the same way in tests/aws/test_functions.py).
LOST_ANSWERS = (
    "sagemaker.CreateHyperParameterTuningJob", "sagemaker.CreateModel", "sagemaker.CreateEndpointConfig",
    "sagemaker.CreateEndpoint", "sagemaker.CreateModelPackage",
    "application-auto-scaling.RegisterScalableTarget", "application-auto-scaling.PutScalingPolicy",
    "lambda.CreateFunction", "lambda.PublishVersion", "lambda.PutFunctionConcurrency",
)


def test_answers_lost_after_every_create_leave_one_of_each(aws_world):
    session, config, fakes = aws_world
    lost: list[str] = []

    def drop_answer(event_name, **_):
        operation = event_name.split(".", 1)[1]
        if operation not in lost:
            lost.append(operation)
            raise ConnectionClosedError(endpoint_url=f"https://{operation.split('.')[0]}.{REGION}.amazonaws.com/")

    for operation in LOST_ANSWERS:
        service, name = operation.split(".")
        session.events.register(f"after-call.{service}.{name}", drop_answer)

    result = pipeline.train_and_deploy(config)

    assert result.model_version == 1
    assert sorted(lost) == sorted(LOST_ANSWERS)  # every create acted, lost its answer, and was retried
    assert_one_of_each(session, config, fakes["sent"])
    assert len(fakes["sagemaker"].tuning_jobs) == 1  # one CreateHyperParameterTuningJob call: the retry attached
