"""Roles and instance profiles converge on moto: repeated calls change and duplicate nothing."""
import os

for _key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ.setdefault(_key, "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import boto3  # noqa: E402
import pytest  # noqa: E402
from moto import mock_aws  # noqa: E402

from backends.aws import iam as iam_ops  # noqa: E402
from core import iam as policies  # noqa: E402

ACCOUNT = "123456789012"  # moto's default account
POLICY = policies.sagemaker_execution_policy("bucket", "proj/dev", ACCOUNT, "us-east-1")
TAGS = {"sagemaker-flows:project": "proj"}


@pytest.fixture
def iam():
    with mock_aws():
        yield boto3.client("iam", region_name="us-east-1")


def _ensure(iam, document=POLICY, service="sagemaker.amazonaws.com", **kwargs) -> str:
    return iam_ops.ensure_role(iam, "proj-dev-sagemaker", service, "execution", document, TAGS, **kwargs)


def _tags(iam, name="proj-dev-sagemaker") -> dict:
    return {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=name)["Tags"]}


def test_ensure_role_twice_makes_one_role(iam):
    first = _ensure(iam)
    assert first == policies.role_arn(ACCOUNT, "proj-dev-sagemaker")
    assert _ensure(iam) == first
    assert [r["RoleName"] for r in iam.list_roles()["Roles"]] == ["proj-dev-sagemaker"]
    assert iam.list_role_policies(RoleName="proj-dev-sagemaker")["PolicyNames"] == ["execution"]
    role = iam.get_role(RoleName="proj-dev-sagemaker")["Role"]
    assert role["AssumeRolePolicyDocument"] == policies.assume_role_policy("sagemaker.amazonaws.com")
    assert _tags(iam) == {**TAGS, "sagemaker-flows:managed": "true"}
    document = iam.get_role_policy(RoleName="proj-dev-sagemaker", PolicyName="execution")["PolicyDocument"]
    assert document == POLICY


def test_second_call_makes_no_write(iam, monkeypatch):
    _ensure(iam)
    writes = []
    for op in ("create_role", "update_assume_role_policy", "put_role_policy", "tag_role"):
        monkeypatch.setattr(iam, op, lambda *a, _op=op, **k: writes.append(_op))
    _ensure(iam)
    assert writes == []


def test_changed_document_trust_and_tags_are_updated(iam):
    _ensure(iam)
    other = policies.ec2_training_policy("bucket", "proj/dev", ACCOUNT, "us-east-1")
    _ensure(iam, document=other, service="ec2.amazonaws.com")
    assert iam.get_role_policy(RoleName="proj-dev-sagemaker", PolicyName="execution")["PolicyDocument"] == other
    role = iam.get_role(RoleName="proj-dev-sagemaker")["Role"]
    assert role["AssumeRolePolicyDocument"] == policies.assume_role_policy("ec2.amazonaws.com")
    iam.untag_role(RoleName="proj-dev-sagemaker", TagKeys=["sagemaker-flows:managed"])
    _ensure(iam, document=other, service="ec2.amazonaws.com")
    assert _tags(iam)["sagemaker-flows:managed"] == "true"
    assert len(iam.list_roles()["Roles"]) == 1


def test_propagation_delay_only_after_a_change(iam, monkeypatch):
    sleeps = []
    monkeypatch.setattr(iam_ops.time, "sleep", sleeps.append)
    _ensure(iam, propagation_delay_s=10)
    _ensure(iam, propagation_delay_s=10)
    _ensure(iam)
    assert sleeps == [10]


def test_instance_profile_is_idempotent(iam):
    _ensure(iam, service="ec2.amazonaws.com")
    arn = iam_ops.ensure_instance_profile(iam, "proj-dev-ec2", "proj-dev-sagemaker")
    assert arn == f"arn:aws:iam::{ACCOUNT}:instance-profile/proj-dev-ec2"
    assert iam_ops.ensure_instance_profile(iam, "proj-dev-ec2", "proj-dev-sagemaker") == arn
    profiles = iam.list_instance_profiles()["InstanceProfiles"]
    assert [(p["InstanceProfileName"], [r["RoleName"] for r in p["Roles"]]) for p in profiles] == [
        ("proj-dev-ec2", ["proj-dev-sagemaker"])]


def test_instance_profile_swaps_in_the_wanted_role(iam):
    _ensure(iam, service="ec2.amazonaws.com")
    iam_ops.ensure_role(iam, "other", "ec2.amazonaws.com", "p", POLICY, {})
    iam_ops.ensure_instance_profile(iam, "proj-dev-ec2", "other")
    iam_ops.ensure_instance_profile(iam, "proj-dev-ec2", "proj-dev-sagemaker")
    roles = iam.get_instance_profile(InstanceProfileName="proj-dev-ec2")["InstanceProfile"]["Roles"]
    assert [r["RoleName"] for r in roles] == ["proj-dev-sagemaker"]


def test_delete_role_removes_everything(iam):
    _ensure(iam, service="ec2.amazonaws.com")
    iam_ops.ensure_instance_profile(iam, "proj-dev-ec2", "proj-dev-sagemaker")
    managed = iam.create_policy(PolicyName="extra", PolicyDocument='{"Version": "2012-10-17", "Statement": '
                                '[{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/k"}]}')
    iam.attach_role_policy(RoleName="proj-dev-sagemaker", PolicyArn=managed["Policy"]["Arn"])
    assert iam_ops.delete_role(iam, "proj-dev-sagemaker") is True
    assert iam.list_roles()["Roles"] == []
    profile = iam.get_instance_profile(InstanceProfileName="proj-dev-ec2")["InstanceProfile"]
    assert profile["Roles"] == []
    assert iam_ops.delete_role(iam, "proj-dev-sagemaker") is False


def test_delete_instance_profile(iam):
    _ensure(iam, service="ec2.amazonaws.com")
    iam_ops.ensure_instance_profile(iam, "proj-dev-ec2", "proj-dev-sagemaker")
    assert iam_ops.delete_instance_profile(iam, "proj-dev-ec2") is True
    assert iam.list_instance_profiles()["InstanceProfiles"] == []
    assert iam.list_instance_profiles_for_role(RoleName="proj-dev-sagemaker")["InstanceProfiles"] == []
    assert iam_ops.delete_instance_profile(iam, "proj-dev-ec2") is False
    assert iam_ops.delete_role(iam, "proj-dev-sagemaker") is True
