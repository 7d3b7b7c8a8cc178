"""Every policy the pipeline writes, checked against IAM's own definitions of actions, resource ARN
formats and condition keys (parliament's copy of the Service Authorization Reference), offline: an
action that does not exist, a resource an action can never match (so AWS denies the call while the
policy looks right), or a condition key the action never carries, fails here instead of in an account.

Each statement is analysed alone, so a finding names its Sid. Resource "*" is allowed only where
the pipeline says it must be (the caller's CALLER_WILDCARD_SIDS, the roles' UNAVOIDABLE_WILDCARD_SIDS)."""
import json
import warnings

import pytest

with warnings.catch_warnings():  # parliament 1.6 finds its data with pkg_resources (setuptools < 81)
    warnings.simplefilter("ignore", UserWarning)
    from parliament import analyze_policy_string

from core import caller_policy
from core import iam
from core.names import PipelineNames

NAMES = PipelineNames("dog-breeds", "dev")
ACCOUNT, REGION, BUCKET = "123456789012", "us-east-1", "my-bucket"
KEYS = [f"arn:aws:kms:{REGION}:{ACCOUNT}:key/abcd"]
READABLE = ["s3://my-ml-data/dogImages/", "s3://my-ml-data/weights/resnet50-11ad3fa6.pth"]
ENDPOINT = iam.endpoint_arn(REGION, ACCOUNT, NAMES.endpoint)


def _documents() -> dict[str, dict]:
    documents = {}
    for mode in ("tuning", "instance"):
        for name, document in caller_policy.caller_policies(
                NAMES, ACCOUNT, REGION, BUCKET, mode=mode, readable_uris=READABLE, key_arns=KEYS,
                caller_arn=f"arn:aws:iam::{ACCOUNT}:role/ci").items():
            documents[f"{mode} {name}"] = document
    documents["sagemaker role"] = iam.sagemaker_execution_policy(
        BUCKET, NAMES.prefix, ACCOUNT, REGION, readable_uris=READABLE, write_key_arns=KEYS, read_key_arns=KEYS)
    documents["ec2 role"] = iam.ec2_training_policy(BUCKET, NAMES.prefix, ACCOUNT, REGION, readable_uris=READABLE,
                                                    write_key_arns=KEYS, read_key_arns=KEYS)
    documents["lambda role"] = iam.lambda_policy(ENDPOINT, [f"s3://{BUCKET}/{NAMES.prefix}/requests/"], ACCOUNT,
                                                 REGION, NAMES.function, read_key_arns=KEYS)
    return documents  # (the roles' trust policies are resource policies, which parliament does not read)


DOCUMENTS = _documents()
WILDCARD_SIDS = caller_policy.CALLER_WILDCARD_SIDS | iam.UNAVOIDABLE_WILDCARD_SIDS


def _findings(statement: dict) -> list[str]:
    policy = analyze_policy_string(json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
                                   include_community_auditors=False)
    return [f"{f.issue}: {f.detail}" for f in policy.findings]


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_each_statement_is_valid_against_iam_definitions(name):
    problems = {}
    for statement in DOCUMENTS[name]["Statement"]:
        sid = statement["Sid"]
        found = _findings(statement)
        if sid in WILDCARD_SIDS:  # Resource "*" by design: only that may be said of it
            found = [f for f in found if not f.startswith("RESOURCE_STAR")]
        if found:
            problems[sid] = found
    assert problems == {}


def test_a_resource_an_action_cannot_match_is_caught():
    # What the caller's policy granted before: a quota's ARN for GetServiceQuota, which has no
    # resource-level permissions, so AWS would have denied every EC2 quota check.
    wrong = {"Sid": "Ec2InstanceQuotas", "Effect": "Allow", "Action": "servicequotas:GetServiceQuota",
             "Resource": f"arn:aws:servicequotas:{REGION}:{ACCOUNT}:ec2/*"}
    assert any(f.startswith("RESOURCE_MISMATCH") for f in _findings(wrong))
    unknown = {"Sid": "Typo", "Effect": "Allow", "Action": "sagemaker:CreateEndpiont", "Resource": ENDPOINT}
    assert any(f.startswith("UNKNOWN_ACTION") for f in _findings(unknown))
