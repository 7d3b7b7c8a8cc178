"""The aws plan's pre-flight checks on moto, each failing with what to change, and a failed check
stopping the flow before anything is made or paid for.

moto lacks Service Quotas for SageMaker and EC2, SimulatePrincipalPolicy and Lambda's
GetAccountSettings: they are answered in-process (tests/aws/planning_fakes.py, tests/aws/fakes.py);
a caller that simulates its policy is a real moto IAM user with its own access key."""
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

import flows.train_and_deploy as pipeline
from backends.aws.backend import AwsBackend
from core.config import PipelineConfig
from core.demo import demo_config
from core.plan import PreflightFailedError
from tests.aws.fakes import FakeAccountSettings, FakeProvisioned, answer
from tests.aws.planning_fakes import FakePolicySimulator, FakeServiceQuotas

REGION = "us-east-1"
ENOUGH = {"ml.m5.xlarge for training job usage": 20.0, "ml.m5.large for endpoint usage": 20.0}


@pytest.fixture
def world(tiny_dataset):
    """A moto account with a caller of its own (an IAM user), and the demo pipeline on aws."""
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        iam.create_user(UserName="deployer")
        key = iam.create_access_key(UserName="deployer")["AccessKey"]
        session = boto3.Session(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
                                region_name=REGION)
        FakeProvisioned(session.events)
        values = demo_config(str(tiny_dataset)).model_dump(mode="json")
        values.update(backend="aws", aws={"region": REGION})
        yield session, PipelineConfig.model_validate(values)


def plan_of(session, config):
    backend = AwsBackend(session, config.project, config.stage, poll_seconds=0, role_propagation_s=0)
    try:
        return backend.planning.plan(config)
    finally:
        backend.close()


def check(plan, name):
    return next(c for c in plan.checks if c.name == name)


def with_settings(config, **sections):
    values = config.model_dump(mode="json")
    for section, settings in sections.items():
        values[section].update(settings)
    return PipelineConfig.model_validate(values)


def test_every_check_passes_in_an_account_that_fits(world):
    session, config = world
    FakeAccountSettings(session.events, limit=1000)
    FakeServiceQuotas(session.events, ENOUGH)
    simulator = FakePolicySimulator(session.events)

    plan = plan_of(session, config)

    assert {c.name: c.status for c in plan.checks} == {
        "data": "pass", "existing endpoint": "pass", "function concurrency": "pass", "training instances": "pass",
        "endpoint instances": "pass", "caller permissions": "pass"}
    # The caller's own user is simulated, on the pipeline's resources, roles passed to their services only.
    assert {c["PolicySourceArn"] for c in simulator.calls} == {"arn:aws:iam::123456789012:user/deployer"}
    passes = [c for c in simulator.calls if c["ActionNames"] == ["iam:PassRole"]]
    assert sorted(r for c in passes for r in c["ResourceArns"]) == [
        "arn:aws:iam::123456789012:role/sagemaker-flows-demo-lambda",
        "arn:aws:iam::123456789012:role/sagemaker-flows-demo-sagemaker"]
    assert all(c["ContextKeys"] == ["iam:PassedToService"] for c in passes)
    simulated = {a for c in simulator.calls for a in c["ActionNames"]}
    assert {"sagemaker:CreateHyperParameterTuningJob", "lambda:PutProvisionedConcurrencyConfig",
            "application-autoscaling:RegisterScalableTarget", "s3:PutObject"} <= simulated
    assert not any(a.startswith("iam:Delete") for a in simulated)  # teardown's permissions are not the run's


def test_missing_permissions_fail_naming_them(world):
    session, config = world
    FakeAccountSettings(session.events)
    FakeServiceQuotas(session.events, ENOUGH)
    FakePolicySimulator(session.events, deny=[("iam:PassRole", "*-sagemaker"), ("sagemaker:UpdateEndpoint", "*")])

    failed = check(plan_of(session, config), "caller permissions")

    assert failed.status == "fail"
    assert "iam:PassRole on arn:aws:iam::123456789012:role/sagemaker-flows-demo-sagemaker (implicitDeny)" in failed.message
    assert "sagemaker:UpdateEndpoint on arn:aws:sagemaker:us-east-1:123456789012:endpoint/sagemaker-flows-demo-endpoint" in failed.message
    assert "`sagemaker-flows plan --caller-policy`" in failed.message


def test_quotas_below_max_parallel_jobs_and_max_capacity_fail(world):
    session, config = world
    FakeAccountSettings(session.events)
    FakePolicySimulator(session.events)
    FakeServiceQuotas(session.events, {"ml.m5.xlarge for training job usage": 1.0, "ml.m5.large for endpoint usage": 2.0})

    plan = plan_of(session, config)

    training, endpoint = check(plan, "training instances"), check(plan, "endpoint instances")
    assert training.status == endpoint.status == "fail"
    assert training.message.startswith('2 x ml.m5.xlarge needed at once, but the quota "ml.m5.xlarge for training '
                                       'job usage"') and "lower training.tuning.max_parallel_jobs" in training.message
    assert endpoint.message.startswith("4 x ml.m5.large needed at once") and "lower autoscaling.max_capacity" in endpoint.message


def test_an_instance_type_without_a_quota_in_the_region_is_not_offered(world):
    session, config = world
    FakeAccountSettings(session.events)
    FakePolicySimulator(session.events)
    FakeServiceQuotas(session.events, ENOUGH)

    plan = plan_of(session, with_settings(config, hosting={"instance_type": "ml.m5.4xlarge"}))

    offered = check(plan, "endpoint instances")
    assert offered.status == "fail" and offered.message.startswith(
        "ml.m5.4xlarge is not offered for endpoint use in us-east-1") and "choose another hosting.instance_type" in offered.message


def test_a_quota_without_an_applied_value_is_checked_against_the_aws_default(world):
    session, config = world  # ListServiceQuotas lists only quotas with an applied value
    FakeAccountSettings(session.events)
    FakePolicySimulator(session.events)
    FakeServiceQuotas(session.events, {"ml.m5.xlarge for training job usage": 20.0},
                      defaults={"ml.m5.xlarge for training job usage": 2.0, "ml.m5.large for endpoint usage": 3.0})

    plan = plan_of(session, config)

    training, endpoint = check(plan, "training instances"), check(plan, "endpoint instances")
    assert training.status == "pass" and "within the quota of 20" in training.message  # the applied value wins
    assert endpoint.status == "fail" and endpoint.message.startswith(
        '4 x ml.m5.large needed at once, but the quota "ml.m5.large for endpoint usage"')
    assert "is 3 in us-east-1" in endpoint.message and "(AWS's default: the account has no applied value)" in endpoint.message
    fits = plan_of(session, with_settings(config, autoscaling={"max_capacity": 3}))
    assert check(fits, "endpoint instances").status == "pass"


def test_a_quota_whose_default_cannot_be_read_is_a_warning_not_a_type_that_is_not_offered(world):
    session, config = world
    FakeAccountSettings(session.events)
    FakePolicySimulator(session.events)
    FakeServiceQuotas(session.events, {"ml.m5.xlarge for training job usage": 20.0})
    session.events.register_first("before-call.service-quotas.ListAWSDefaultServiceQuotas", lambda **_: answer(
        400, {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}))

    plan = plan_of(session, config)

    endpoint = check(plan, "endpoint instances")
    assert endpoint.status == "warn" and "its default could not be read (AccessDeniedException" in endpoint.message
    assert check(plan, "training instances").status == "pass" and plan.failed == []


def test_reserved_concurrency_that_would_leave_fewer_than_100_unreserved_fails(world):
    session, config = world
    FakeAccountSettings(session.events, limit=105)
    FakeServiceQuotas(session.events, ENOUGH)
    FakePolicySimulator(session.events)

    failed = check(plan_of(session, config), "function concurrency")

    assert failed.status == "fail"
    assert "function.reserved_concurrency=10 does not fit" in failed.message
    assert "Lower function.reserved_concurrency to 5 or less" in failed.message


def test_instance_mode_checks_the_ec2_type_and_its_vcpu_quota(world):
    session, config = world
    FakeAccountSettings(session.events)
    FakePolicySimulator(session.events)
    FakeServiceQuotas(session.events, ENOUGH, ec2={"L-1216C47A": 2.0})
    instance = with_settings(config, training={"mode": "instance", "ec2_instance_type": "m5.xlarge"})

    plan = plan_of(session, instance)

    assert check(plan, "EC2 instance type").status == "pass"
    quota = check(plan, "EC2 vCPU quota")
    assert quota.status == "fail" and "m5.xlarge needs 4 vCPUs" in quota.message and "L-1216C47A" in quota.message
    assert {(c.kind, c.action) for c in plan.changes} >= {("training job", "create"), ("instance profile", "create"),
                                                          ("IAM role", "create")}
    unknown = plan_of(session, with_settings(config, training={"mode": "instance", "ec2_instance_type": "zz9.huge"}))
    assert check(unknown, "EC2 instance type").message == ("training.ec2_instance_type zz9.huge is not offered in "
                                                           "us-east-1: choose another")


def test_data_that_is_not_staged_fails(world):
    session, config = world
    FakeAccountSettings(session.events)
    plan = plan_of(session, with_settings(config, data={"source": "s3://no-such-bucket/dogImages"}))
    assert check(plan, "data").status == "fail" and check(plan, "data").message.startswith(
        "data.source s3://no-such-bucket/dogImages: ")


def test_data_synced_without_sha256_is_read_once_a_run_and_the_plan_says_what_it_costs(world, prefect_api):
    from core.datasets import folder_checksum
    from tasks.plan_run import plan_run
    from tasks.stage_dataset import stage_dataset

    session, config = world
    FakeAccountSettings(session.events)
    FakeServiceQuotas(session.events, ENOUGH)
    FakePolicySimulator(session.events)
    folder = Path(config.data.source)
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    s3 = session.client("s3")
    s3.create_bucket(Bucket="my-ml-data")
    for rel, body in files.items():  # as `aws s3 sync` uploads them: no SHA-256 anywhere
        s3.put_object(Bucket="my-ml-data", Key=f"digits/{rel}", Body=body)
    reads = []
    session.events.register("before-parameter-build.s3.GetObject",
                            lambda params, **_: reads.append(params["Key"]) if params["Bucket"] == "my-ml-data" and
                            not params["Key"].endswith("_manifest.json") else None)
    synced = with_settings(config, data={"source": "s3://my-ml-data/digits"})
    backend = AwsBackend(session, config.project, config.stage, poll_seconds=0, role_propagation_s=0)

    plan = plan_run(synced, backend)
    staged = stage_dataset(synced, backend)

    data = check(plan, "data")
    assert data.status == "warn" and plan.failed == []
    images = sorted(rel for rel in files if not rel.rsplit("/", 1)[-1].startswith("."))  # as staging counts them
    megabytes = sum(len(files[rel]) for rel in images) / 1e6
    assert data.message.startswith(f"s3://my-ml-data/digits: {len(images)} of its {len(images)} objects carry no "
                                   f"SHA-256, so each plan and each run read them once ({megabytes:.1f} MB)")
    assert "aws s3 sync --checksum-algorithm SHA256" in data.message
    assert staged.uri == "s3://my-ml-data/digits" and staged.checksum == folder_checksum(folder)
    assert sorted(reads) == [f"digits/{rel}" for rel in images]  # each object once in the run


def test_checks_that_cannot_be_made_are_warnings(world):
    session, config = world  # moto answers neither Service Quotas for sagemaker nor the policy simulator
    FakeAccountSettings(session.events)
    plan = plan_of(session, config)
    assert check(plan, "SageMaker quotas").status == "warn" and check(plan, "caller permissions").status == "warn"
    assert plan.failed == []


def test_a_failed_check_stops_the_flow_before_anything_is_made(world, prefect_api, monkeypatch):
    session, config = world
    FakeAccountSettings(session.events, limit=50)  # nothing can be reserved in this account
    monkeypatch.setattr(pipeline, "get_backend", lambda name, cfg: AwsBackend(session, cfg.project, cfg.stage,
                                                                               poll_seconds=0, role_propagation_s=0))

    with pytest.raises(PreflightFailedError, match=r"function concurrency: .*reserved_concurrency=10 does not fit"):
        pipeline.train_and_deploy(config)

    assert session.client("s3").list_buckets()["Buckets"] == []
    assert session.client("sagemaker").list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"] == []
    assert [r["RoleName"] for r in session.client("iam").list_roles()["Roles"]] == []
    assert session.client("lambda").list_functions()["Functions"] == []


def register_version(session, config):
    """Version 1 of the pipeline's model group, as a finished run registers it (nothing else is made)."""
    backend = AwsBackend(session, config.project, config.stage, poll_seconds=0, role_propagation_s=0)
    try:
        return backend.registry.register_model_version(
            config.names.model_group, "s3://somewhere/model.tar.gz", {"test_accuracy": 0.9}, {"lr": "0.01"},
            "sha256:0", "sagemaker-flows-demo-t1")
    finally:
        backend.close()


def test_a_rollback_plans_first_and_a_failed_check_stops_it_unless_enforce_is_off(world, prefect_api, monkeypatch):
    import flows.rollback as rollback_flow
    from backends.errors import NotFoundError

    session, config = world
    FakeAccountSettings(session.events, limit=50)  # nothing can be reserved in this account
    monkeypatch.setattr(rollback_flow, "get_backend", lambda name, cfg: AwsBackend(session, cfg.project, cfg.stage,
                                                                                    poll_seconds=0, role_propagation_s=0))
    with pytest.raises(NotFoundError, match="has no version 1"):  # a version that is not there: before the plan
        rollback_flow.rollback(config, 1)
    register_version(session, config)
    buckets = session.client("s3").list_buckets()["Buckets"]

    with pytest.raises(PreflightFailedError, match=r"function concurrency: .*reserved_concurrency=10 does not fit"):
        rollback_flow.rollback(config, 1)
    assert session.client("s3").list_buckets()["Buckets"] == buckets  # nothing was made
    assert [r["RoleName"] for r in session.client("iam").list_roles()["Roles"]] == []


def test_a_rollback_is_planned_as_serving_the_version_again_so_training_checks_cannot_stop_it(world):
    session, config = world
    FakeAccountSettings(session.events)
    FakeServiceQuotas(session.events, {"ml.m5.large for endpoint usage": 20.0})  # no training quota at all
    simulator = FakePolicySimulator(session.events, deny=[("ec2:*", "*"), ("sagemaker:CreateHyperParameterTuningJob", "*")])
    gone = with_settings(config, data={"source": "/no/such/folder"}, training={"mode": "instance"})
    version = register_version(session, gone)
    backend = AwsBackend(session, config.project, config.stage, poll_seconds=0, role_propagation_s=0)
    try:
        release = backend.planning.plan(gone, version)
        simulated = {a for call in simulator.calls for a in call["ActionNames"]}
        run = backend.planning.plan(gone)
    finally:
        backend.close()

    assert release.failed == [] and check(run, "data").status == "fail"  # the run would stop; the rollback does not
    assert {c.name for c in release.checks} == {"existing endpoint", "function concurrency", "endpoint instances",
                                               "caller permissions"}
    kinds = {c.kind for c in release.changes}
    assert not kinds & {"dataset", "training job", "tuning job", "instance profile"}
    assert ("model version", "sagemaker-flows-demo-models/1", "update") in {
        (c.kind, c.name, c.action) for c in release.changes}
    assert not any(c.name.endswith("-ec2") for c in release.changes)  # the training instance's role is not needed
    assert next(c for c in release.costs if c.item == "training").amount == 0.0
    assert "sagemaker:UpdateEndpoint" in simulated and not any(a.startswith("ec2:") for a in simulated)


def test_with_enforce_off_a_failed_check_is_a_warning(world, prefect_api):
    from tasks.plan_run import plan_run

    session, config = world
    FakeAccountSettings(session.events, limit=50)
    lenient = with_settings(config, preflight={"enforce": False})
    backend = AwsBackend(session, config.project, config.stage, poll_seconds=0, role_propagation_s=0)

    plan = plan_run(lenient, backend)

    assert [c.name for c in plan.failed] == ["function concurrency"]
    with pytest.raises(PreflightFailedError):
        plan_run(config, backend)
