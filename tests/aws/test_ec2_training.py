"""backends/aws/ec2_training.py on moto: EC2, SSM and S3.

moto runs no user data, so a background thread plays the instance: it waits for the launch,
then writes what the script would (partial log, model.tar.gz, training.log, status.json).
moto launches again on a repeated RunInstances ClientToken, where EC2 answers with the instance
that token launched: tests/aws/fakes.py's FakeEc2ClientTokens plays EC2 there."""
import base64
import json
import os
import threading
import time

for _key, _value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "testing", "AWS_SECURITY_TOKEN": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ.setdefault(_key, _value)

import boto3  # noqa: E402
import pytest  # noqa: E402
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError  # noqa: E402
from moto import mock_aws  # noqa: E402

from backends.aws.backend import AwsBackend  # noqa: E402
from backends.aws.ec2_training import DIGEST_TAG, JOB_TAG, MANAGED_TAG, Ec2Training  # noqa: E402
from backends.aws.errors import RoleNotUsableError  # noqa: E402
from backends.aws.training import Ec2Network  # noqa: E402
from backends.errors import WaitTimedOutError  # noqa: E402
from backends.types import TrainingRequest  # noqa: E402
from backends.waiting import Clock  # noqa: E402
from core.ec2_user_data import DLAMI_SSM_PARAMETER  # noqa: E402
from core.retry import is_transient  # noqa: E402
from tests.aws.fakes import FakeEc2ClientTokens  # noqa: E402

REGION = "us-east-1"
BUCKET = "sagemaker-flows-ec2-test"
AMI_PARAMETER = "/sagemaker-flows-test/dlami/ami-id"  # moto refuses names under /aws/, as AWS does
CODE_URI = f"s3://{BUCKET}/proj/code/training-0123456789abcdef.tar.gz"
LOG = """\
sagemaker-flows: job digits on i-0123 (g5.xlarge)
[metric] epoch=1 train_loss=2.1 train_accuracy=0.3 valid_loss=1.9 valid_accuracy=0.4 epoch_seconds=2.0 images_per_second=35.0
[metric] epoch=2 train_loss=1.2 train_accuracy=0.6 valid_loss=1.1 valid_accuracy=0.7 epoch_seconds=1.9 images_per_second=36.8
[metric] best_epoch=2 valid_loss=1.1 valid_accuracy=0.7
[metric] test_loss=1.0 test_accuracy=0.72
sagemaker-flows: job digits ended: Completed
"""
LINES = LOG.splitlines()


_AMIS: list[str] = []


def _amis(ec2) -> tuple[str, str]:
    """Two of moto's public AMIs (listing them all takes seconds, so only once per module)."""
    if not _AMIS:
        _AMIS.extend(image["ImageId"] for image in ec2.describe_images(Owners=["amazon"])["Images"][:2])
    return _AMIS[0], _AMIS[1]  # moto loads the same public AMIs in every mock


@pytest.fixture
def aws():
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        ssm = boto3.client("ssm", region_name=REGION)
        s3 = boto3.client("s3", region_name=REGION)
        iam = boto3.client("iam", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        ami, other_ami = _amis(ec2)
        ssm.put_parameter(Name=AMI_PARAMETER, Value=ami, Type="String")
        iam.create_role(RoleName="ec2-training", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "ec2.amazonaws.com"}}]}))
        profile = iam.create_instance_profile(InstanceProfileName="ec2-training")["InstanceProfile"]["Arn"]
        iam.add_role_to_instance_profile(InstanceProfileName="ec2-training", RoleName="ec2-training")
        tokens = FakeEc2ClientTokens(ec2.meta.events, boto3.client("ec2", region_name=REGION))
        yield {"ec2": ec2, "ssm": ssm, "s3": s3, "ami": ami, "other_ami": other_ami, "profile": profile,
               "tokens": tokens}


class SpyEc2:
    """The moto client, recording what run_instances and terminate_instances were called with."""

    def __init__(self, ec2):
        self.ec2, self.launches, self.terminations = ec2, [], []

    def run_instances(self, **params):
        self.launches.append(params)
        return self.ec2.run_instances(**params)

    def terminate_instances(self, **params):
        self.terminations.append(params["InstanceIds"])
        return self.ec2.terminate_instances(**params)

    def __getattr__(self, name):
        return getattr(self.ec2, name)


def _runner(aws, ec2=None, **kwargs) -> Ec2Training:
    return Ec2Training(ec2 or aws["ec2"], aws["ssm"], aws["s3"], poll_seconds=0.05, ami_parameter=AMI_PARAMETER,
                       **kwargs)


def _request(job_name="digits-260101-000000-abcd", **kwargs) -> TrainingRequest:
    defaults = dict(hyperparameters={"epochs": "2", "learning-rate": "0.01", "architecture": "resnet18"},
                    dataset_uri=f"s3://{BUCKET}/proj/datasets/digits", output_uri=f"s3://{BUCKET}/proj/jobs",
                    instance_type="ml.g5.xlarge", max_runtime_seconds=600)
    return TrainingRequest(job_name=job_name, **{**defaults, **kwargs})


def _run_kwargs(aws, **kwargs):
    return {"instance_type": "g5.xlarge", "instance_profile_arn": aws["profile"], "code_uri": CODE_URI,
            "region": REGION, "tags": {"project": "sagemaker-flows", "stage": "test"}, **kwargs}


def _instances(ec2, job_name=None, states=("pending", "running", "shutting-down", "terminated", "stopping", "stopped")):
    """The job's instances (every one, with job_name None), whatever their state."""
    filters = [{"Name": "instance-state-name", "Values": list(states)}]
    if job_name:
        filters.append({"Name": f"tag:{JOB_TAG}", "Values": [job_name]})
    pages = ec2.describe_instances(Filters=filters)
    return [i for r in pages["Reservations"] for i in r["Instances"]]


def _attempt(aws, job_name) -> dict:
    return json.loads(aws["s3"].get_object(Bucket=BUCKET, Key=f"proj/jobs/{job_name}/attempt.json")["Body"].read())


def _lose_answers(ec2, operation, error, times=1):
    """The call goes through (moto does it), then the answer is lost on its way back, `times` times."""
    lost = []

    def lose(**_):
        if len(lost) < times:
            lost.append(operation)
            raise error

    ec2.meta.events.register(f"after-call.ec2.{operation}", lose)
    return lost


def _state(ec2, instance_id):
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


class PlayedInstance(threading.Thread):
    """Does what the user data script would, once the instance is there."""

    def __init__(self, job_name, status="Completed", failure_reason=None, log=LOG, pause=0.3,
                 write_marker=True, shut_down=True, partial=True):
        super().__init__(daemon=True)
        self.job_name, self.status, self.failure_reason, self.log = job_name, status, failure_reason, log
        self.pause, self.write_marker, self.shut_down, self.partial = pause, write_marker, shut_down, partial
        self.instance_id = None
        self.errors: list[BaseException] = []

    def run(self):
        try:
            ec2 = boto3.client("ec2", region_name=REGION)
            s3 = boto3.client("s3", region_name=REGION)
            deadline = time.monotonic() + 10
            while not self.instance_id:
                live = _instances(ec2, self.job_name, ("pending", "running"))
                if live:
                    self.instance_id = live[0]["InstanceId"]
                elif time.monotonic() > deadline:
                    raise TimeoutError("no instance was launched")
                else:
                    time.sleep(0.02)
            prefix = f"proj/jobs/{self.job_name}"
            if self.partial:  # two whole lines and half of the third, as a sync mid-line leaves it
                cut = LOG.index("\n", LOG.index("\n") + 1) + 20
                s3.put_object(Bucket=BUCKET, Key=f"{prefix}/training.log.partial", Body=self.log[:cut].encode())
            time.sleep(self.pause)
            if self.status == "Completed":
                s3.put_object(Bucket=BUCKET, Key=f"{prefix}/output/model.tar.gz", Body=b"model")
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}/training.log", Body=self.log.encode())
            if self.write_marker:
                s3.put_object(Bucket=BUCKET, Key=f"{prefix}/status.json", Body=json.dumps({
                    "status": self.status, "failure_reason": self.failure_reason, "exit_code": 0 if
                    self.status == "Completed" else 1, "job_name": self.job_name, "instance_id": self.instance_id,
                    "started_at": 1000, "ended_at": 1042}).encode())
            if self.shut_down:
                ec2.terminate_instances(InstanceIds=[self.instance_id])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)


def test_completed_run_launches_as_specified_and_reads_the_metrics(aws):
    request = _request()
    player = PlayedInstance(request.job_name)
    player.start()
    logged, epochs = [], []
    spy = SpyEc2(aws["ec2"])
    outcome = _runner(aws, spy).run(request, **_run_kwargs(aws), on_log=logged.append, on_epoch=epochs.append)
    player.join(5)
    assert not player.errors

    assert outcome.status == "Completed" and outcome.failure_reason is None
    assert outcome.job_name == request.job_name and outcome.hyperparameters == request.hyperparameters
    assert outcome.model_artifact == f"s3://{BUCKET}/proj/jobs/{request.job_name}/output/model.tar.gz"
    assert outcome.log_location == f"s3://{BUCKET}/proj/jobs/{request.job_name}/training.log"
    assert outcome.final_metrics["valid_accuracy"] == 0.7 and outcome.final_metrics["test_accuracy"] == 0.72
    assert outcome.final_metrics["best_epoch"] == 2
    assert [row["epoch"] for row in outcome.epochs] == [1, 2] and outcome.epochs[0]["train_loss"] == 2.1
    assert logged == LINES  # streamed from the partial log, finished from the final one, each line once
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert outcome.duration_seconds > 0

    [instance] = _instances(aws["ec2"], request.job_name)
    assert instance["InstanceId"] == player.instance_id
    assert instance["ImageId"] == aws["ami"] and instance["InstanceType"] == "g5.xlarge"
    [launch] = spy.launches
    assert launch["ClientToken"] == f"{request.job_name}-a1"  # the job's first attempt, not a random token
    assert _attempt(aws, request.job_name) == {"attempt": 1, "client_token": launch["ClientToken"]}
    assert launch["IamInstanceProfile"] == {"Arn": aws["profile"]}
    assert launch["MinCount"] == launch["MaxCount"] == 1
    assert launch["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert launch["MetadataOptions"]["HttpTokens"] == "required"
    assert "SubnetId" not in launch and "SecurityGroupIds" not in launch
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert len(tags.pop(DIGEST_TAG)) == 16  # what it was asked to do, for a re-run to find it by
    assert tags == {"Name": request.job_name, JOB_TAG: request.job_name, MANAGED_TAG: "true",
                    "project": "sagemaker-flows", "stage": "test"}
    tags[DIGEST_TAG] = instance_tags(instance)[DIGEST_TAG]
    specs = {spec["ResourceType"]: {t["Key"]: t["Value"] for t in spec["Tags"]} for spec in launch["TagSpecifications"]}
    assert specs == {"instance": tags, "volume": tags}
    behaviour = aws["ec2"].describe_instance_attribute(InstanceId=instance["InstanceId"],
                                                       Attribute="instanceInitiatedShutdownBehavior")
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    encoded = aws["ec2"].describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
    user_data = base64.b64decode(encoded["UserData"]["Value"]).decode()
    assert user_data.startswith("#!/bin/bash\n")
    assert f"JOB_NAME={request.job_name}\n" in user_data
    assert f"CODE_URI={CODE_URI}\n" in user_data
    assert f"DATA_URI=s3://{BUCKET}/proj/datasets/digits/\n" in user_data
    assert f"JOB_URI=s3://{BUCKET}/proj/jobs/{request.job_name}\n" in user_data
    assert "MAX_RUNTIME_S=600\n" in user_data and "export AWS_DEFAULT_REGION=us-east-1" in user_data
    assert "    --epochs 2\n" in user_data and "    --architecture resnet18\n" in user_data
    assert _state(aws["ec2"], instance["InstanceId"]) == "terminated"


def test_a_completed_job_is_returned_without_launching_again(aws):
    request = _request()
    player = PlayedInstance(request.job_name)
    player.start()
    first = _runner(aws).run(request, **_run_kwargs(aws))
    player.join(5)
    assert first.status == "Completed" and len(_instances(aws["ec2"], request.job_name)) == 1

    logged = []
    second = _runner(aws).run(request, **_run_kwargs(aws), on_log=logged.append)
    assert len(_instances(aws["ec2"], request.job_name)) == 1  # nothing new launched
    assert second.status == "Completed" and second.model_artifact == first.model_artifact
    assert second.final_metrics == first.final_metrics and second.epochs == first.epochs
    assert second.duration_seconds == 42  # as the instance measured it


def test_a_running_instance_of_the_job_is_attached_to(aws):
    request = _request()
    existing = aws["ec2"].run_instances(ImageId=aws["ami"], InstanceType="g5.xlarge", MinCount=1, MaxCount=1,
                                        TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                            {"Key": JOB_TAG, "Value": request.job_name}]}])
    existing_id = existing["Instances"][0]["InstanceId"]
    player = PlayedInstance(request.job_name)
    player.start()
    outcome = _runner(aws).run(request, **_run_kwargs(aws))
    player.join(5)
    assert outcome.status == "Completed" and player.instance_id == existing_id
    assert [i["InstanceId"] for i in _instances(aws["ec2"], request.job_name)] == [existing_id]


def test_failed_marker_gives_the_reason_and_the_instance_is_gone(aws):
    request = _request()
    reason = "HyperparameterError: --learning-rate is outside [1e-08, 10.0]"
    player = PlayedInstance(request.job_name, status="Failed", failure_reason=reason, shut_down=False,
                            log="[metric] epoch=1 train_loss=2.5 valid_loss=2.4 valid_accuracy=0.1\ntraining failed\n")
    player.start()
    outcome = _runner(aws).run(request, **_run_kwargs(aws))
    player.join(5)
    assert outcome.status == "Failed" and outcome.failure_reason == reason
    assert outcome.model_artifact is None
    assert [row["epoch"] for row in outcome.epochs] == [1]
    assert _state(aws["ec2"], player.instance_id) == "terminated"


def test_a_failed_job_is_run_again_and_the_old_marker_is_not_read(aws):
    request = _request()
    aws["s3"].put_object(Bucket=BUCKET, Key=f"proj/jobs/{request.job_name}/status.json",
                         Body=json.dumps({"status": "Failed", "failure_reason": "an earlier attempt"}).encode())
    player = PlayedInstance(request.job_name, pause=0.5)
    player.start()
    outcome = _runner(aws).run(request, **_run_kwargs(aws))
    player.join(5)
    assert outcome.status == "Completed"


def test_timeout_fails_and_terminates(aws):
    request = _request()
    outcome = _runner(aws).run(request, **_run_kwargs(aws, timeout_s=0.3))
    assert outcome.status == "Failed" and outcome.failure_reason.startswith("MaxRuntimeExceeded")
    assert "the instance was terminated" in outcome.failure_reason
    [instance] = _instances(aws["ec2"], request.job_name)
    assert instance["State"]["Name"] == "terminated"
    assert not is_transient(WaitTimedOutError("a training wait ran out"))  # a run out wait is not retried


def test_instance_that_ends_without_a_marker_fails(aws):
    request = _request()
    player = PlayedInstance(request.job_name, write_marker=False, pause=0.1)
    player.start()
    outcome = _runner(aws).run(request, **_run_kwargs(aws))
    player.join(5)
    assert outcome.status == "Failed"
    assert outcome.failure_reason.startswith("instance ended without reporting a status")
    assert outcome.final_metrics["test_accuracy"] == 0.72  # the log it left is still read


def test_cancellation_in_on_log_terminates_and_propagates(aws):
    request = _request()
    player = PlayedInstance(request.job_name, pause=5, shut_down=False, write_marker=False)
    player.start()

    def on_log(line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _runner(aws).run(request, **_run_kwargs(aws), on_log=on_log)
    assert player.instance_id and _state(aws["ec2"], player.instance_id) == "terminated"


def test_cancellation_while_polling_terminates_and_propagates(aws):
    request = _request()
    calls = []

    def sleep(seconds):
        calls.append(seconds)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _runner(aws, clock=Clock(sleep=sleep)).run(request, **_run_kwargs(aws))
    [instance] = _instances(aws["ec2"], request.job_name)
    assert instance["State"]["Name"] == "terminated" and calls == [0.05] * 3


class _RecordingSsm:
    def __init__(self, ami):
        self.ami, self.names = ami, []

    def get_parameter(self, Name):  # noqa: N803 - boto3's spelling
        self.names.append(Name)
        return {"Parameter": {"Name": Name, "Value": self.ami}}


def test_default_ami_is_the_public_dlami_parameter_and_ami_id_overrides_it(aws, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_FLOWS_DLAMI_PARAMETER", raising=False)
    ssm = _RecordingSsm(aws["ami"])
    runner = Ec2Training(aws["ec2"], ssm, aws["s3"], poll_seconds=0.05)
    runner.run(_request("job-a"), **_run_kwargs(aws, timeout_s=0.1))
    assert ssm.names == [DLAMI_SSM_PARAMETER]

    runner.run(_request("job-b"), **_run_kwargs(aws, timeout_s=0.1, ami_id=aws["other_ami"]))
    assert ssm.names == [DLAMI_SSM_PARAMETER]  # not asked again
    [instance] = _instances(aws["ec2"], "job-b")
    assert instance["ImageId"] == aws["other_ami"]


def test_a_not_yet_usable_instance_profile_is_retried(aws):
    class FlakyEc2:
        def __init__(self, ec2):
            self.ec2, self.failures = ec2, 2

        def run_instances(self, **params):
            if self.failures:
                self.failures -= 1
                raise ClientError({"Error": {"Code": "InvalidParameterValue", "Message":
                                             "Value (arn:...) for parameter iamInstanceProfile.arn is invalid. "
                                             "Invalid IAM Instance Profile ARN"}}, "RunInstances")
            return self.ec2.run_instances(**params)

        def __getattr__(self, name):
            return getattr(self.ec2, name)

    ec2 = FlakyEc2(aws["ec2"])
    naps = []
    runner = Ec2Training(ec2, aws["ssm"], aws["s3"], poll_seconds=0.05, ami_parameter=AMI_PARAMETER,
                         clock=Clock(sleep=lambda s: naps.append(s) or time.sleep(min(s, 0.05))))
    outcome = runner.run(_request(), **_run_kwargs(aws, timeout_s=0.2))
    assert ec2.failures == 0 and naps[:2] == [1.0, 2.0]  # backoff.errors.while_role_propagates
    assert outcome.status == "Failed" and len(_instances(aws["ec2"], _request().job_name)) == 1

    # A profile that never becomes usable: refused for good once IAM's propagation time has passed.
    ec2.failures = 10**6
    now = [0.0]
    runner = Ec2Training(ec2, aws["ssm"], aws["s3"], poll_seconds=0.05, ami_parameter=AMI_PARAMETER,
                         clock=Clock(now=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)))
    with pytest.raises(RoleNotUsableError):
        runner.run(_request("never-usable"), **_run_kwargs(aws))
    assert _instances(aws["ec2"], "never-usable") == [] and now[0] == 120.0


def test_throttling_is_left_to_botocore_and_the_task(aws):
    class ThrottledEc2(SpyEc2):
        def run_instances(self, **params):
            self.launches.append(params)
            raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "Request limit exceeded."}},
                              "RunInstances")

    ec2 = ThrottledEc2(aws["ec2"])
    with pytest.raises(ClientError) as info:
        _runner(aws, ec2).run(_request(), **_run_kwargs(aws))
    assert is_transient(info.value)  # the task retries it, with the same token
    assert len(ec2.launches) == 1  # no loop of ours on top of botocore's retries
    assert _instances(aws["ec2"]) == []


@pytest.mark.parametrize("lost", [ConnectionClosedError(endpoint_url="https://ec2.us-east-1.amazonaws.com/"),
                                  EndpointConnectionError(endpoint_url="https://ec2.us-east-1.amazonaws.com/")],
                         ids=["connection-closed", "endpoint-connection"])
def test_a_lost_launch_answer_is_attached_to_on_retry(aws, lost):
    request = _request()
    spy = SpyEc2(aws["ec2"])
    _lose_answers(aws["ec2"], "RunInstances", lost)
    with pytest.raises(type(lost)):  # the instance started, but its answer never arrived
        _runner(aws, spy).run(request, **_run_kwargs(aws))
    [started] = _instances(aws["ec2"])
    assert started["State"]["Name"] in ("pending", "running")  # left for the retry, not terminated

    player = PlayedInstance(request.job_name)
    player.start()
    outcome = _runner(aws, spy).run(request, **_run_kwargs(aws))  # the task's retry
    player.join(5)
    assert outcome.status == "Completed" and player.instance_id == started["InstanceId"]
    assert [i["InstanceId"] for i in _instances(aws["ec2"])] == [started["InstanceId"]]  # one, ever
    assert [launch["ClientToken"] for launch in spy.launches] == [f"{request.job_name}-a1"] * 2
    assert aws["tokens"].repeats == [f"{request.job_name}-a1"]  # EC2 answered with the first instance


def test_a_failed_attempt_is_followed_by_a_new_one_under_the_next_token(aws):
    request = _request()
    spy = SpyEc2(aws["ec2"])
    failing = PlayedInstance(request.job_name, status="Failed", failure_reason="AlgorithmError: CUDA out of memory")
    failing.start()
    first = _runner(aws, spy).run(request, **_run_kwargs(aws))
    failing.join(5)
    assert first.status == "Failed" and "CUDA" in first.failure_reason

    # A retry of the failed job (a new task or flow-run attempt): token a1 still names the ended
    # instance, so the job's second attempt is launched, under a2.
    working = PlayedInstance(request.job_name)
    working.start()
    second = _runner(aws, spy).run(request, **_run_kwargs(aws))
    working.join(5)
    assert second.status == "Completed" and working.instance_id != failing.instance_id
    assert [launch["ClientToken"] for launch in spy.launches] == [
        f"{request.job_name}-a1", f"{request.job_name}-a1", f"{request.job_name}-a2"]
    assert _attempt(aws, request.job_name)["attempt"] == 2
    assert sorted(i["InstanceId"] for i in _instances(aws["ec2"])) == sorted(
        [failing.instance_id, working.instance_id])
    assert _state(aws["ec2"], failing.instance_id) == _state(aws["ec2"], working.instance_id) == "terminated"

    third = _runner(aws, spy).run(request, **_run_kwargs(aws))  # completed: nothing launched again
    assert third.status == "Completed" and len(spy.launches) == 3


def test_a_rerun_with_a_new_job_name_attaches_to_a_running_job_of_the_same_configuration(aws):
    crashed = _request("digits-260101-000000-aaaa")
    _lose_answers(aws["ec2"], "RunInstances", ConnectionClosedError(endpoint_url="https://ec2"))
    with pytest.raises(ConnectionClosedError):  # the first flow run's launch, then the run crashed
        _runner(aws).run(crashed, **_run_kwargs(aws))
    [running] = _instances(aws["ec2"])

    rerun = _request("digits-260102-000000-bbbb")  # a new flow run: a new name, the same configuration
    player = PlayedInstance(crashed.job_name)
    player.start()
    outcome = _runner(aws).run(rerun, **_run_kwargs(aws))
    player.join(5)
    assert player.instance_id == running["InstanceId"] and len(_instances(aws["ec2"])) == 1
    assert outcome.status == "Completed" and outcome.job_name == crashed.job_name  # the job it followed
    assert outcome.model_artifact == f"s3://{BUCKET}/proj/jobs/{crashed.job_name}/output/model.tar.gz"

    changed = _request("digits-260103-000000-cccc", hyperparameters={**rerun.hyperparameters, "epochs": "3"})
    player = PlayedInstance(changed.job_name)
    player.start()
    outcome = _runner(aws).run(changed, **_run_kwargs(aws))
    player.join(5)
    assert outcome.status == "Completed" and outcome.job_name == changed.job_name
    assert len(_instances(aws["ec2"])) == 2  # another configuration: its own instance


def test_the_backend_launches_the_configured_ec2_type_in_the_configured_network(aws, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_FLOWS_DLAMI_PARAMETER", AMI_PARAMETER)
    vpc = aws["ec2"].create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    subnet = aws["ec2"].create_subnet(VpcId=vpc, CidrBlock="10.7.1.0/24")["Subnet"]["SubnetId"]
    group = aws["ec2"].create_security_group(GroupName="training", Description="egress only", VpcId=vpc)["GroupId"]
    backend = AwsBackend(boto3.Session(region_name=REGION), "proj", "test", bucket=BUCKET, poll_seconds=0.05,
                         role_propagation_s=0, ec2_network=Ec2Network(subnet, (group,)))
    request = _request(instance_type="ml.m5.xlarge", ec2_instance_type="g5.2xlarge", max_runtime_seconds=60)
    player = PlayedInstance(request.job_name)
    player.start()
    outcome = backend.training.run_training_job(request)
    player.join(5)
    assert outcome.status == "Completed"
    [instance] = _instances(aws["ec2"], request.job_name)
    assert instance["InstanceType"] == "g5.2xlarge"  # training.ec2_instance_type, not instance_type less "ml."
    assert instance["SubnetId"] == subnet and [g["GroupId"] for g in instance["SecurityGroups"]] == [group]
    assert instance_tags(instance)["sagemaker-flows:stage"] == "test"


def instance_tags(instance) -> dict:
    return {t["Key"]: t["Value"] for t in instance["Tags"]}


def test_pretrained_file_is_named_for_train_py(aws):
    request = _request(pretrained_uri=f"s3://{BUCKET}/proj/weights/resnet18.pth")
    outcome = _runner(aws).run(request, **_run_kwargs(aws, timeout_s=0.1))
    assert outcome.hyperparameters["pretrained-file"] == "resnet18.pth"
    [instance] = _instances(aws["ec2"], request.job_name)
    user_data = base64.b64decode(aws["ec2"].describe_instance_attribute(
        InstanceId=instance["InstanceId"], Attribute="userData")["UserData"]["Value"]).decode()
    assert f"PRETRAINED_URI=s3://{BUCKET}/proj/weights/resnet18.pth\n" in user_data
    assert "    --pretrained-file resnet18.pth\n" in user_data


def test_an_interrupted_launch_leaves_no_instance_behind(aws):
    class InterruptedEc2(SpyEc2):
        def run_instances(self, **params):
            super().run_instances(**params)  # the instance starts, but the answer never arrives
            raise KeyboardInterrupt

    request = _request()
    with pytest.raises(KeyboardInterrupt):
        _runner(aws, InterruptedEc2(aws["ec2"])).run(request, **_run_kwargs(aws))
    [instance] = _instances(aws["ec2"], request.job_name)
    assert instance["State"]["Name"] == "terminated"


def test_a_throttled_poll_is_tried_again(aws):
    class ThrottledEc2(SpyEc2):
        throttles = 2

        def describe_instances(self, **params):
            if "InstanceIds" in params and self.throttles:
                self.throttles -= 1
                raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "Request limit exceeded."}},
                                  "DescribeInstances")
            return self.ec2.describe_instances(**params)

    request = _request()
    ec2 = ThrottledEc2(aws["ec2"])
    player = PlayedInstance(request.job_name)
    player.start()
    outcome = _runner(aws, ec2).run(request, **_run_kwargs(aws))
    player.join(5)
    assert outcome.status == "Completed" and ec2.throttles == 0
