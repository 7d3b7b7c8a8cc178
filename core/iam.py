"""Least-privilege IAM policy documents, built from the resources they guard (pure; no AWS calls).

They replace the seed's AmazonSageMakerFullAccess. A Resource of "*" appears only where AWS offers
no resource-level permission for the action; those statements carry a Sid from
UNAVOIDABLE_WILDCARD_SIDS so tests (and a warning) can tell them from mistakes.
"""
from __future__ import annotations

from typing import Sequence

VERSION = "2012-10-17"
TRUSTED_SERVICES = ("sagemaker.amazonaws.com", "lambda.amazonaws.com", "ec2.amazonaws.com")
# ecr:GetAuthorizationToken and cloudwatch:PutMetricData accept only Resource "*".
ECR_AUTH_SID = "EcrAuthTokenOnlyAllowsWildcard"
PUT_METRIC_DATA_SID = "PutMetricDataOnlyAllowsWildcard"
UNAVOIDABLE_WILDCARD_SIDS = frozenset({ECR_AUTH_SID, PUT_METRIC_DATA_SID})
EC2_LOG_GROUP_PREFIX = "/sagemaker-flows/ec2/"
_WRITE_LOGS = ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents")


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _clean_prefix(prefix: str) -> str:
    # An empty or wildcarded prefix would silently widen every S3 grant to the whole bucket.
    cleaned = prefix.strip("/")
    if not cleaned or "*" in cleaned or "?" in cleaned:
        raise ValueError(f"prefix {prefix!r} must be a non-empty key prefix without wildcards")
    return cleaned


def _document(*statements: dict) -> dict:
    return {"Version": VERSION, "Statement": list(statements)}


def endpoint_arn(region: str, account_id: str, name: str) -> str:
    # SageMaker lowercases names in endpoint ARNs; IAM compares ARNs case-sensitively.
    return f"arn:{_partition(region)}:sagemaker:{region}:{account_id}:endpoint/{name.lower()}"


def role_arn(account_id: str, name: str, partition: str = "aws") -> str:
    return f"arn:{partition}:iam::{account_id}:role/{name}"


def assume_role_policy(service: str) -> dict:
    """Trust policy letting one AWS service assume the role."""
    if service not in TRUSTED_SERVICES:
        raise ValueError(f"unsupported trusted service {service!r}; one of {', '.join(TRUSTED_SERVICES)}")
    return _document({"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"})


def _s3_statements(bucket: str, prefix: str, region: str, actions: Sequence[str], sid: str) -> list[dict]:
    """Object actions under `{prefix}/`, and listing restricted to that prefix."""
    p, part = _clean_prefix(prefix), _partition(region)
    return [
        {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": f"arn:{part}:s3:::{bucket}/{p}/*"},
        {"Sid": "ListOnlyUnderPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:{part}:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [p, f"{p}/*"]}}},
    ]


def _logs_statement(sid: str, region: str, account_id: str, group: str, actions: Sequence[str]) -> dict:
    # `group` may end in "*" (a family of groups); ":log-stream:*" covers the streams inside them.
    base = f"arn:{_partition(region)}:logs:{region}:{account_id}:log-group:{group}"
    return {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": [base, f"{base}:log-stream:*"]}


def sagemaker_execution_policy(bucket: str, prefix: str, account_id: str, region: str,
                               image_account_ids: Sequence[str] = ("*",)) -> dict:
    """Execution role of training, tuning and hosting: one S3 prefix, SageMaker logs, image pulls.

    image_account_ids: the registries images are pulled from. The AWS deep learning images live in
    AWS-owned accounts that differ by region, hence "*" by default; pass them to narrow it.
    """
    part = _partition(region)
    return _document(
        *_s3_statements(bucket, prefix, region, ["s3:GetObject", "s3:PutObject"], "ReadWriteUnderPrefix"),
        {"Sid": "BucketLocation", "Effect": "Allow", "Action": "s3:GetBucketLocation",
         "Resource": f"arn:{part}:s3:::{bucket}"},
        _logs_statement("SageMakerLogs", region, account_id, "/aws/sagemaker/*",
                        [*_WRITE_LOGS, "logs:DescribeLogStreams"]),
        {"Sid": "PullImages", "Effect": "Allow",
         "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
         "Resource": [f"arn:{part}:ecr:{region}:{acct}:repository/*" for acct in image_account_ids]},
        # GetAuthorizationToken is account-wide: AWS accepts only Resource "*".
        {"Sid": ECR_AUTH_SID, "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        # PutMetricData has no resource-level permissions: the namespace condition is the only limit.
        {"Sid": PUT_METRIC_DATA_SID, "Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*",
         "Condition": {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}},
    )


def s3_object_arns(uris: Sequence[str], region: str) -> list[str]:
    """The ARNs of the objects under s3://bucket/prefix/ locations (an object URI: that object alone)."""
    arns = []
    for uri in uris:
        if not uri.startswith("s3://") or "/" not in uri[5:]:
            raise ValueError(f"{uri!r} is not an s3://bucket/key location")
        bucket, key = uri[5:].split("/", 1)
        tail = f"{_clean_prefix(key)}/*" if key.endswith("/") else _clean_prefix(key)
        arns.append(f"arn:{_partition(region)}:s3:::{bucket}/{tail}")
    return arns


def lambda_policy(endpoint_arn: str, readable_s3_prefixes: Sequence[str], account_id: str, region: str,
                  function_name: str) -> dict:
    """The function may invoke one endpoint, write its own logs and read request images under exactly
    the prefixes its handler accepts (core.functions.readable_s3_prefixes)."""
    if "*" in endpoint_arn or ":endpoint/" not in endpoint_arn:
        raise ValueError(f"{endpoint_arn!r} is not the ARN of one endpoint")
    return _document(
        {"Sid": "InvokeOneEndpoint", "Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": endpoint_arn},
        _logs_statement("OwnLogs", region, account_id, f"/aws/lambda/{function_name}", _WRITE_LOGS),
        {"Sid": "ReadRequestImagesUnderPrefixes", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": s3_object_arns(readable_s3_prefixes, region)},
    )


def ec2_training_policy(bucket: str, prefix: str, account_id: str, region: str) -> dict:
    """Instance-mode training on EC2: code/data in and outputs out under the prefix, its own logs, nothing else."""
    return _document(
        *_s3_statements(bucket, prefix, region, ["s3:GetObject", "s3:PutObject"], "ReadWriteUnderPrefix"),
        _logs_statement("Ec2TrainingLogs", region, account_id, f"{EC2_LOG_GROUP_PREFIX}*",
                        [*_WRITE_LOGS, "logs:DescribeLogStreams"]),
    )


def wildcard_resources(document: dict) -> list[str]:
    """Sids of statements granting on any resource: Resource "*" (alone or in a list), or a NotResource."""
    sids = []
    for index, statement in enumerate(document.get("Statement", [])):
        resources = statement.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        if "*" in resources or "NotResource" in statement:
            sids.append(statement.get("Sid", f"#{index}"))
    return sids
