"""Roles and instance profiles converge on moto: repeated calls change and duplicate nothing."""
import json
import os

for _key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ.setdefault(_key, "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import boto3  # noqa: E402
import pytest  # noqa: E402
from moto import mock_aws  # noqa: E402

from backends.aws import iam as iam_ops  # noqa: E402
from backends.aws.iam import PipelineRoles  # noqa: E402
from backends.aws.storage import S3Storage  # noqa: E402
from backends.session import make_client  # noqa: E402
from core import iam as policies  # noqa: E402
from core.names import PipelineNames  # noqa: E402
from tests.aws.fakes import LostAnswerResent  # noqa: E402

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


def _document(iam, role: str, policy: str) -> dict:
    return iam.get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]


def _statements(document: dict) -> dict[str, dict]:
    return {s["Sid"]: s for s in document["Statement"]}


@pytest.fixture
def buckets(iam):
    """The pipeline's bucket on SSE-KMS (its key named by alias), a data bucket on SSE-KMS (by key ARN)
    and a weights bucket on SSE-S3."""
    s3, kms = boto3.client("s3", region_name="us-east-1"), boto3.client("kms", region_name="us-east-1")
    keys = {}
    for bucket, sse in (("pipeline-bucket", "alias"), ("other-data", "arn"), ("weights-bucket", None)):
        s3.create_bucket(Bucket=bucket)
        if sse is None:
            rule = {"SSEAlgorithm": "AES256"}
        else:
            key = kms.create_key()["KeyMetadata"]
            keys[bucket] = key["Arn"]
            if sse == "alias":
                kms.create_alias(AliasName=f"alias/{bucket}", TargetKeyId=key["KeyId"])
            rule = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": f"alias/{bucket}" if sse == "alias" else key["Arn"]}
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": rule}]})
    asked = []
    storage = S3Storage(s3, "pipeline-bucket", kms=kms)

    def bucket_key(bucket):
        asked.append(bucket)
        return storage.bucket_key_arn(bucket)
    return keys, bucket_key, asked


def test_training_roles_read_exactly_the_data_and_weights_outside_the_prefix_with_their_keys(iam, buckets):
    keys, bucket_key, asked = buckets
    readable = ["s3://other-data/dogs/", "s3://weights-bucket/models/resnet.pth",
                "s3://pipeline-bucket/proj/dev/datasets/abc/"]  # the last is under the prefix: nothing more
    roles = PipelineRoles(iam, PipelineNames("proj", "dev"), lambda: "pipeline-bucket", lambda: ACCOUNT,
                          "us-east-1", readable_uris=readable, bucket_key=bucket_key)

    roles.sagemaker_role_arn()
    roles.ec2_instance_profile_arn()

    for role, policy in (("proj-dev-sagemaker", "sagemaker-flows-execution"),
                         ("proj-dev-ec2", "sagemaker-flows-ec2-training")):
        statements = _statements(_document(iam, role, policy))
        assert statements["ReadGivenLocations"]["Action"] == "s3:GetObject"
        assert statements["ReadGivenLocations"]["Resource"] == [
            "arn:aws:s3:::other-data/dogs/*", "arn:aws:s3:::weights-bucket/models/resnet.pth"]
        assert statements["ListGivenPrefixes1"]["Resource"] == "arn:aws:s3:::other-data"
        assert statements["ListGivenPrefixes1"]["Condition"] == {"StringLike": {"s3:prefix": ["dogs", "dogs/*"]}}
        assert "ListGivenPrefixes2" not in statements  # an object needs no listing
        assert statements["DecryptBucketObjects"]["Resource"] == sorted([keys["pipeline-bucket"], keys["other-data"]])
        assert statements["EncryptBucketObjects"]["Resource"] == [keys["pipeline-bucket"]]  # only where it writes
    assert sorted(asked) == ["other-data", "pipeline-bucket", "weights-bucket"]  # each read once, for both roles


def test_the_lambda_role_decrypts_with_the_keys_of_the_prefixes_it_reads(iam, buckets):
    keys, bucket_key, _ = buckets
    roles = PipelineRoles(iam, PipelineNames("proj", "dev"), lambda: "pipeline-bucket", lambda: ACCOUNT,
                          "us-east-1", bucket_key=bucket_key)

    roles.lambda_role_arn("proj-dev-predict", "proj-dev-endpoint",
                          ["s3://pipeline-bucket/proj/dev/", "s3://weights-bucket/requests/"])

    statements = _statements(_document(iam, "proj-dev-lambda", "sagemaker-flows-invoke-endpoint"))
    assert statements["DecryptBucketObjects"]["Resource"] == [keys["pipeline-bucket"]]
    assert "EncryptBucketObjects" not in statements


def test_roles_of_buckets_without_sse_kms_get_no_kms_statement(iam):
    roles = PipelineRoles(iam, PipelineNames("proj", "dev"), lambda: "bucket", lambda: ACCOUNT, "us-east-1")
    roles.sagemaker_role_arn()
    document = _document(iam, "proj-dev-sagemaker", "sagemaker-flows-execution")
    assert not [s for s in document["Statement"] if "kms" in json.dumps(s["Action"])]
    assert "ReadGivenLocations" not in _statements(document)


def test_a_pipeline_reading_s3_data_and_weights_where_they_are_gets_roles_that_may(iam):
    from backends.aws.backend import AwsBackend
    from core.config import PipelineConfig

    config = PipelineConfig(backend="aws", project="proj", stage="dev", aws={"region": "us-east-1", "bucket": "mine"},
                            data={"source": "s3://other-data/dogs"},
                            training={"pretrained_weights": "s3://weights-bucket/resnet.pth"})
    backend = AwsBackend.from_config(config)
    try:
        backend.roles.sagemaker_role_arn()
    finally:
        backend.close()
    statements = _statements(_document(iam, "proj-dev-sagemaker", "sagemaker-flows-execution"))
    assert statements["ReadGivenLocations"]["Resource"] == [
        "arn:aws:s3:::other-data/dogs/*", "arn:aws:s3:::weights-bucket/resnet.pth"]
    assert statements["ReadWriteUnderPrefix"]["Resource"] == "arn:aws:s3:::mine/proj/dev/*"


@pytest.mark.parametrize("operation", ["CreateInstanceProfile", "AddRoleToInstanceProfile"])
def test_an_instance_profile_call_botocore_resent_after_a_dropped_connection_is_done_once(operation):
    """moto answers the resend as IAM does: EntityAlreadyExists "Instance Profile <name> already exists."
    (hashicorp/terraform-provider-aws#8041), LimitExceeded "Cannot exceed quota for
    InstanceSessionsPerInstanceProfile: 1" (getmoto/moto#6404, checked against AWS there)."""
    with mock_aws():
        client = make_client(boto3.Session(region_name="us-east-1"), "iam")  # the pipeline's retry settings
        client.create_role(RoleName="proj-dev-ec2", AssumeRolePolicyDocument=json.dumps(
            policies.assume_role_policy("ec2.amazonaws.com")))
        resent = LostAnswerResent(client, operation)  # IAM's answer to the resend: moto's own

        arn = iam_ops.ensure_instance_profile(client, "proj-dev-ec2", "proj-dev-ec2")

        assert resent.sends == 2
        profile = client.get_instance_profile(InstanceProfileName="proj-dev-ec2")["InstanceProfile"]
        assert profile["Arn"] == arn and [r["RoleName"] for r in profile["Roles"]] == ["proj-dev-ec2"]
        assert iam_ops.ensure_instance_profile(client, "proj-dev-ec2", "proj-dev-ec2") == arn


def test_a_profile_full_with_another_role_is_still_an_error(iam):
    for role in ("proj-dev-ec2", "other"):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="proj-dev-ec2")
    reads = []

    def another_run_adds_its_role(parsed, **_):  # between our read of the empty profile and our add
        if not reads:
            reads.append(1)
            iam.add_role_to_instance_profile(InstanceProfileName="proj-dev-ec2", RoleName="other")
    iam.meta.events.register("after-call.iam.GetInstanceProfile", another_run_adds_its_role)

    with pytest.raises(iam.exceptions.LimitExceededException):
        iam_ops.ensure_instance_profile(iam, "proj-dev-ec2", "proj-dev-ec2")
