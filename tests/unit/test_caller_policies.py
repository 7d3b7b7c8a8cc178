"""The caller's least-privilege policy as IAM can hold it: managed policies of one service group each,
every one under IAM's 6,144 characters, granting together what the one document granted (frozen in
tests/unit/data/caller_grants_before_split.json) with the fixes since, and every AWS call the code makes."""
import json
import re
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

from core import caller_policy
from core import iam
from core.names import PipelineNames

NAMES = PipelineNames("dog-breeds", "dev")
ACCOUNT, REGION, BUCKET = "123456789012", "us-east-1", "my-bucket"
OPTIONS = dict(readable_uris=["s3://my-ml-data/dogImages/", "s3://my-ml-data/weights/resnet50-11ad3fa6.pth"],
               key_arns=[f"arn:aws:kms:{REGION}:{ACCOUNT}:key/abcd"], caller_arn=f"arn:aws:iam::{ACCOUNT}:user/ci")
BEFORE = json.loads((Path(__file__).parent / "data" / "caller_grants_before_split.json").read_text())
ROOT = Path(__file__).resolve().parents[2]

SM = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
FUNCTION = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:dog-breeds-dev-predict"
JOBS, TRIALS = f"{SM}:hyper-parameter-tuning-job/dev-tune-*", f"{SM}:training-job/dev-tune-*"
EC2_ROLE = f"arn:aws:iam::{ACCOUNT}:role/dog-breeds-dev-ec2"


def _condition(**values) -> str:
    return json.dumps(values, sort_keys=True)


REQUEST_TAGS = _condition(StringEquals={"aws:RequestTag/sagemaker-flows:project": "dog-breeds",
                                        "aws:RequestTag/sagemaker-flows:stage": "dev"})
RESOURCE_TAGS = _condition(StringEquals={"aws:ResourceTag/sagemaker-flows:project": "dog-breeds",
                                         "aws:ResourceTag/sagemaker-flows:stage": "dev"})
SAGEMAKER_SCALING = _condition(StringEquals={"application-autoscaling:service-namespace": "sagemaker"})
SCALING_WRITES = [f"application-autoscaling:{a}" for a in ("RegisterScalableTarget", "PutScalingPolicy",
                                                           "DeleteScalingPolicy", "DeregisterScalableTarget")]
# What changed since the one document: (removed, added) grants of (action, resource, condition).
COMMON_FIXES = (
    {("sagemaker:UpdateEndpointWeightsAndCapacities", f"{SM}:endpoint/dog-breeds-dev-endpoint", ""),  # never called
     *((action, "*", "") for action in SCALING_WRITES)},
    {("sagemaker:InvokeEndpoint", f"{SM}:endpoint/dog-breeds-dev-endpoint", ""),  # loadtest's default target
     ("lambda:GetFunctionConfiguration", f"{FUNCTION}:*", ""),  # a version's state, by its qualified ARN
     ("lambda:GetFunction", f"{FUNCTION}:*", ""),
     ("s3:GetEncryptionConfiguration", "arn:aws:s3:::my-ml-data", ""),  # the data bucket's SSE-KMS key
     ("s3:AbortMultipartUpload", "arn:aws:s3:::my-bucket/dog-breeds/dev/*", ""),  # a failed upload's parts
     ("servicequotas:ListAWSDefaultServiceQuotas", "*", ""),  # quotas with no applied value
     *((action, "*", SAGEMAKER_SCALING) for action in SCALING_WRITES)},  # SageMaker's scalable targets only
)
MODE_FIXES = {
    "tuning": (  # every project's jobs of the stage match the name: what changes them needs the pipeline's tags
        {("sagemaker:CreateHyperParameterTuningJob", JOBS, ""), ("sagemaker:StopHyperParameterTuningJob", JOBS, ""),
         ("sagemaker:AddTags", JOBS, ""), ("sagemaker:AddTags", TRIALS, "")},
        {("sagemaker:CreateHyperParameterTuningJob", JOBS, REQUEST_TAGS), ("sagemaker:AddTags", JOBS, REQUEST_TAGS),
         ("sagemaker:AddTags", TRIALS, REQUEST_TAGS), ("sagemaker:StopHyperParameterTuningJob", JOBS, RESOURCE_TAGS)}),
    "instance": (  # AddRoleToInstanceProfile checks iam:PassRole without iam:PassedToService; GetServiceQuota
        # has no resource-level permissions (parliament's IAM definitions: test_iam_definitions.py)
        {("iam:PassRole", EC2_ROLE, _condition(StringEquals={"iam:PassedToService": "ec2.amazonaws.com"})),
         ("servicequotas:GetServiceQuota", f"arn:aws:servicequotas:{REGION}:{ACCOUNT}:ec2/*", ""),
         ("ssm:GetParameter", f"arn:aws:ssm:{REGION}::parameter/aws/service/deeplearning/*", "")},
        {("iam:PassRole", EC2_ROLE, _condition(StringEqualsIfExists={"iam:PassedToService": "ec2.amazonaws.com"})),
         ("servicequotas:GetServiceQuota", "*", ""),
         ("ssm:GetParameter", f"arn:aws:ssm:{REGION}:*:parameter/aws/service/deeplearning/*", "")}),
}


def _listify(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _grants(documents) -> set[tuple[str, str, str]]:
    return {(action, resource, json.dumps(s["Condition"], sort_keys=True) if s.get("Condition") else "")
            for document in documents for s in document["Statement"]
            for action in _listify(s["Action"]) for resource in _listify(s["Resource"])}


@pytest.mark.parametrize("mode", ["tuning", "instance"])
def test_each_policy_fits_a_managed_policy_and_has_a_stable_name(mode):
    documents = caller_policy.caller_policies(NAMES, ACCOUNT, REGION, BUCKET, mode=mode, **OPTIONS)
    groups = ["storage", "roles", "sagemaker", *(["instances"] if mode == "instance" else []), "function", "scaling"]
    assert list(documents) == [f"dog-breeds-dev-caller-{group}" for group in groups]
    for name, document in documents.items():
        text = json.dumps(document)
        assert len(re.sub(r"\s", "", text)) == caller_policy.policy_size(document) <= caller_policy.MANAGED_POLICY_MAX, name
        sids = [s["Sid"] for s in document["Statement"]]
        assert document["Version"] == "2012-10-17" and len(sids) == len(set(sids))
        assert set(iam.wildcard_resources(document)) <= caller_policy.CALLER_WILDCARD_SIDS
        # one service group each: its name says what it holds
        services = {a.split(":")[0] for s in document["Statement"] for a in _listify(s["Action"])}
        assert {caller_policy.CALLER_POLICY_GROUPS[service] for service in services} == {name.rsplit("-", 1)[1]}
    assert sum(caller_policy.policy_size(d) for d in documents.values()) > caller_policy.MANAGED_POLICY_MAX  # why it is split


@pytest.mark.parametrize("mode", ["tuning", "instance"])
def test_together_they_grant_what_the_one_document_did_with_the_fixes(mode):
    documents = caller_policy.caller_policies(NAMES, ACCOUNT, REGION, BUCKET, mode=mode, **OPTIONS)
    before = {tuple(grant) for grant in BEFORE[mode]}
    removed = COMMON_FIXES[0] | MODE_FIXES[mode][0]
    added = COMMON_FIXES[1] | MODE_FIXES[mode][1]
    assert removed <= before and not added & before
    assert _grants(documents.values()) == (before - removed) | added


def test_many_locations_to_read_go_on_in_a_second_storage_policy():
    many = [f"s3://data-bucket-{n:03d}/a-rather-long-prefix-of-images-{n:03d}/" for n in range(60)]
    documents = caller_policy.caller_policies(NAMES, ACCOUNT, REGION, BUCKET, readable_uris=many)
    assert "dog-breeds-dev-caller-storage-2" in documents
    assert all(caller_policy.policy_size(d) <= caller_policy.MANAGED_POLICY_MAX for d in documents.values())
    one = caller_policy.caller_policies(NAMES, ACCOUNT, REGION, BUCKET, readable_uris=many[:1])
    assert ("s3:GetObject", "arn:aws:s3:::data-bucket-059/a-rather-long-prefix-of-images-059/*", "") in _grants(
        documents.values()) and "dog-breeds-dev-caller-storage-2" not in one


# -- every AWS call of the code ----------------------------------------------------------------------
# The services whose clients the code makes, with the prefix IAM gives their actions.
SERVICES = {"s3": "s3", "sagemaker": "sagemaker", "sagemaker-runtime": "sagemaker", "lambda": "lambda", "iam": "iam",
            "ec2": "ec2", "cloudwatch": "cloudwatch", "application-autoscaling": "application-autoscaling",
            "service-quotas": "servicequotas", "ssm": "ssm", "kms": "kms", "sts": "sts"}
# Operations whose IAM action is named otherwise (the S3 ones: the Service Authorization Reference).
ACTION_OF = {"s3:HeadBucket": "s3:ListBucket", "s3:HeadObject": "s3:GetObject", "s3:ListObjectsV2": "s3:ListBucket",
             "s3:ListObjects": "s3:ListBucket", "s3:GetBucketEncryption": "s3:GetEncryptionConfiguration",
             "s3:PutBucketEncryption": "s3:PutEncryptionConfiguration", "s3:DeleteObjects": "s3:DeleteObject",
             "s3:PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock", "lambda:Invoke": "lambda:InvokeFunction"}
# boto3's transfer methods, which are not operations of the model.
TRANSFERS = {"upload_file": {"s3:PutObject", "s3:AbortMultipartUpload"}, "download_file": {"s3:GetObject"}}
NEEDS_NO_PERMISSION = {"sts:GetCallerIdentity"}
NOT_AWS_CALLS = {"list_trials"}  # SageMakerTuning.list_trials (ListTrainingJobsForHyperParameterTuningJob)


def _operations() -> dict[str, set[str]]:
    """snake_case name of an operation, a paginator or a waiter -> the IAM actions it may stand for."""
    session, names = botocore.session.get_session(), {}
    for service, prefix in SERVICES.items():
        model = session.get_service_model(service)
        for operation in model.operation_names:
            names.setdefault(xform_name(operation), set()).add(f"{prefix}:{operation}")
        try:
            waiters = session.get_waiter_model(service)
        except Exception:  # noqa: BLE001 - a service without waiters
            continue
        for waiter in waiters.waiter_names:
            names.setdefault(xform_name(waiter), set()).add(f"{prefix}:{waiters.get_waiter(waiter).operation}")
    return names


def test_every_aws_call_of_the_code_is_granted():
    operations = _operations()
    called: dict[str, set[str]] = {}
    for folder in ("backends/aws", "tasks", "flows"):
        for path in (ROOT / folder).rglob("*.py"):
            # client.op(...), or_none(client.op, ...), get_paginator("op"), wait_until(client, "waiter")
            for name in re.findall(r"\.([a-z][a-z0-9_]+)\b|\"([a-z][a-z0-9_]+)\"", path.read_text()):
                name = name[0] or name[1]
                if name in operations and name not in NOT_AWS_CALLS or name in TRANSFERS:
                    called.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    granted = {a for mode in ("tuning", "instance")
               for a in (a for action in caller_policy.caller_actions(NAMES, ACCOUNT, REGION, BUCKET, mode=mode, **OPTIONS)
                         for a in action.actions)} | NEEDS_NO_PERMISSION
    assert {"invoke_endpoint", "get_function_configuration", "list_aws_default_service_quotas",
            "published_version_active", "list_role_tags"} <= called.keys()  # the scan sees each kind of call
    missing = {}
    for name, paths in sorted(called.items()):
        actions = TRANSFERS.get(name) or {ACTION_OF.get(a, a) for a in operations[name]}
        # A name several services share (list_tags, tag_resource) needs one of their actions; a transfer, all.
        if not (actions <= granted if name in TRANSFERS else actions & granted):
            missing[name] = (sorted(actions), sorted(paths))
    assert missing == {}
