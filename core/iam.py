"""Least-privilege IAM policy documents, built from the resources they guard (pure; no AWS calls).

They replace the seed's AmazonSageMakerFullAccess. A Resource of "*" appears only where AWS offers
no resource-level permission for the action; those statements carry a Sid from
UNAVOIDABLE_WILDCARD_SIDS so tests (and a warning) can tell them from mistakes. What whoever runs
the pipeline needs is core/caller_policy.py, built on these.
"""
from __future__ import annotations

from typing import Sequence

VERSION = "2012-10-17"
TRUSTED_SERVICES = ("sagemaker.amazonaws.com", "lambda.amazonaws.com", "ec2.amazonaws.com")
SERVICE_FOR_ROLE = {"sagemaker": "sagemaker.amazonaws.com", "lambda": "lambda.amazonaws.com",
                    "ec2": "ec2.amazonaws.com"}
# ecr:GetAuthorizationToken and cloudwatch:PutMetricData accept only Resource "*".
ECR_AUTH_SID = "EcrAuthTokenOnlyAllowsWildcard"
PUT_METRIC_DATA_SID = "PutMetricDataOnlyAllowsWildcard"
UNAVOIDABLE_WILDCARD_SIDS = frozenset({ECR_AUTH_SID, PUT_METRIC_DATA_SID})
EC2_LOG_GROUP_PREFIX = "/sagemaker-flows/ec2/"
_WRITE_LOGS = ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents")


def partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def clean_prefix(prefix: str) -> str:
    # An empty or wildcarded prefix would silently widen every S3 grant to the whole bucket.
    cleaned = prefix.strip("/")
    if not cleaned or "*" in cleaned or "?" in cleaned:
        raise ValueError(f"prefix {prefix!r} must be a non-empty key prefix without wildcards")
    return cleaned


def policy_document(*statements: dict) -> dict:
    return {"Version": VERSION, "Statement": list(statements)}


def endpoint_arn(region: str, account_id: str, name: str) -> str:
    # SageMaker lowercases names in endpoint ARNs; IAM compares ARNs case-sensitively.
    return f"arn:{partition(region)}:sagemaker:{region}:{account_id}:endpoint/{name.lower()}"


def role_arn(account_id: str, name: str, partition: str = "aws") -> str:
    return f"arn:{partition}:iam::{account_id}:role/{name}"


def assume_role_policy(service: str) -> dict:
    """Trust policy letting one AWS service assume the role."""
    if service not in TRUSTED_SERVICES:
        raise ValueError(f"unsupported trusted service {service!r}; one of {', '.join(TRUSTED_SERVICES)}")
    return policy_document({"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"})


def _s3_statements(bucket: str, prefix: str, region: str, actions: Sequence[str], sid: str) -> list[dict]:
    """Object actions under `{prefix}/`, and listing restricted to that prefix."""
    p, part = clean_prefix(prefix), partition(region)
    return [
        {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": f"arn:{part}:s3:::{bucket}/{p}/*"},
        {"Sid": "ListOnlyUnderPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:{part}:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [p, f"{p}/*"]}}},
    ]


def _logs_statement(sid: str, region: str, account_id: str, group: str, actions: Sequence[str]) -> dict:
    # `group` may end in "*" (a family of groups); ":log-stream:*" covers the streams inside them.
    base = f"arn:{partition(region)}:logs:{region}:{account_id}:log-group:{group}"
    return {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": [base, f"{base}:log-stream:*"]}


def sagemaker_execution_policy(bucket: str, prefix: str, account_id: str, region: str,
                               image_account_ids: Sequence[str] = ("*",), *, readable_uris: Sequence[str] = (),
                               write_key_arns: Sequence[str] = (), read_key_arns: Sequence[str] = ()) -> dict:
    """Execution role of training, tuning and hosting: one S3 prefix, SageMaker logs, image pulls.

    image_account_ids: the registries images are pulled from. The AWS deep learning images live in
    AWS-owned accounts that differ by region, hence "*" by default; pass them to narrow it.
    readable_uris: s3:// locations outside the prefix that jobs read (data, pretrained weights);
    write_key_arns / read_key_arns: the SSE-KMS keys of the buckets it writes to / only reads.
    """
    part = partition(region)
    return policy_document(
        *_s3_statements(bucket, prefix, region, ["s3:GetObject", "s3:PutObject"], "ReadWriteUnderPrefix"),
        *readable_location_statements(readable_uris, region),
        *kms_statements(write_key_arns, read_key_arns),
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


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:] or not uri[5:].split("/", 1)[0]:
        raise ValueError(f"{uri!r} is not an s3://bucket/key location")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def training_inputs(data_source: str, pretrained_weights: str | None) -> list[str]:
    """The s3:// locations training reads where they are: an s3:// data source (a prefix, so it ends
    in "/") and s3:// pretrained weights (an object). A local or https:// source is staged under the
    pipeline's prefix instead, local weights are uploaded there."""
    inputs = []
    if data_source.startswith("s3://"):
        inputs.append(data_source.rstrip("/") + "/")
    if pretrained_weights and pretrained_weights.startswith("s3://"):
        inputs.append(pretrained_weights)
    return inputs


def locations_outside(prefix_uri: str, uris: Sequence[str]) -> list[str]:
    """The s3:// locations of `uris` not under `prefix_uri` (what a role needs besides its own prefix),
    each once, in order."""
    own = prefix_uri if prefix_uri.endswith("/") else prefix_uri + "/"
    outside: list[str] = []
    for uri in uris:
        if not (uri + ("" if uri.endswith("/") else "/")).startswith(own) and uri not in outside:
            outside.append(uri)
    return outside


def readable_location_statements(uris: Sequence[str], region: str) -> list[dict]:
    """Read on exactly these s3:// locations: a prefix (ending in "/") -> its objects, and listing with
    that prefix condition; an object -> GetObject on that object alone; a bare s3://bucket/ -> the
    bucket, as named. [] for none."""
    if not uris:
        return []
    part = partition(region)
    objects: set[str] = set()
    listed: dict[str, set[str] | None] = {}  # bucket -> its s3:prefix values (None: the whole bucket)
    for uri in uris:
        bucket, key = split_s3_uri(uri)
        if not key.strip("/"):
            objects.add(f"arn:{part}:s3:::{bucket}/*")
            listed[bucket] = None
        elif uri.endswith("/"):
            p = clean_prefix(key)
            objects.add(f"arn:{part}:s3:::{bucket}/{p}/*")
            if listed.get(bucket, set()) is not None:
                listed[bucket] = listed.get(bucket, set()) | {p, f"{p}/*"}
        else:
            objects.add(f"arn:{part}:s3:::{bucket}/{clean_prefix(key)}")
    statements = [{"Sid": "ReadGivenLocations", "Effect": "Allow", "Action": "s3:GetObject",
                   "Resource": sorted(objects)}]
    for number, (bucket, prefixes) in enumerate(sorted(listed.items()), 1):
        statement = {"Sid": f"ListGivenPrefixes{number}", "Effect": "Allow", "Action": "s3:ListBucket",
                     "Resource": f"arn:{part}:s3:::{bucket}"}
        if prefixes is not None:
            statement["Condition"] = {"StringLike": {"s3:prefix": sorted(prefixes)}}
        statements.append(statement)
    return statements


def kms_statements(write_key_arns: Sequence[str] = (), read_key_arns: Sequence[str] = ()) -> list[dict]:
    """Use of the SSE-KMS keys of the buckets a role reads (kms:Decrypt) and writes (kms:GenerateDataKey
    too), through S3 only. [] when no bucket uses SSE-KMS with a key of its own (the AWS managed
    aws/s3 key needs no grant: its key policy allows every principal of the account through S3)."""
    for arn in (*write_key_arns, *read_key_arns):
        if not arn.startswith("arn:") or ":key/" not in arn:
            raise ValueError(f"{arn!r} is not the ARN of a KMS key")
    through_s3 = {"StringLike": {"kms:ViaService": "s3.*"}}
    statements = []
    decrypt = sorted(set(write_key_arns) | set(read_key_arns))
    if decrypt:
        statements.append({"Sid": "DecryptBucketObjects", "Effect": "Allow", "Action": "kms:Decrypt",
                           "Resource": decrypt, "Condition": through_s3})
    if write_key_arns:
        statements.append({"Sid": "EncryptBucketObjects", "Effect": "Allow", "Action": "kms:GenerateDataKey",
                           "Resource": sorted(set(write_key_arns)), "Condition": through_s3})
    return statements


def s3_object_arns(uris: Sequence[str], region: str) -> list[str]:
    """The ARNs of the objects under s3://bucket/prefix/ locations (an object URI: that object alone)."""
    arns = []
    for uri in uris:
        if not uri.startswith("s3://") or "/" not in uri[5:]:
            raise ValueError(f"{uri!r} is not an s3://bucket/key location")
        bucket, key = uri[5:].split("/", 1)
        tail = f"{clean_prefix(key)}/*" if key.endswith("/") else clean_prefix(key)
        arns.append(f"arn:{partition(region)}:s3:::{bucket}/{tail}")
    return arns


def lambda_policy(endpoint_arn: str, readable_s3_prefixes: Sequence[str], account_id: str, region: str,
                  function_name: str, read_key_arns: Sequence[str] = ()) -> dict:
    """The function may invoke one endpoint, write its own logs and read request images under exactly
    the prefixes its handler accepts (core.functions.readable_s3_prefixes), decrypting them with the
    SSE-KMS keys of their buckets (read_key_arns)."""
    if "*" in endpoint_arn or ":endpoint/" not in endpoint_arn:
        raise ValueError(f"{endpoint_arn!r} is not the ARN of one endpoint")
    return policy_document(
        {"Sid": "InvokeOneEndpoint", "Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": endpoint_arn},
        _logs_statement("OwnLogs", region, account_id, f"/aws/lambda/{function_name}", _WRITE_LOGS),
        {"Sid": "ReadRequestImagesUnderPrefixes", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": s3_object_arns(readable_s3_prefixes, region)},
        *kms_statements(read_key_arns=read_key_arns),
    )


def ec2_training_policy(bucket: str, prefix: str, account_id: str, region: str, *,
                        readable_uris: Sequence[str] = (), write_key_arns: Sequence[str] = (),
                        read_key_arns: Sequence[str] = ()) -> dict:
    """Instance-mode training on EC2: code/data in and outputs out under the prefix, the given data and
    weights outside it (readable_uris), its own logs, nothing else; the buckets' SSE-KMS keys as
    sagemaker_execution_policy."""
    return policy_document(
        *_s3_statements(bucket, prefix, region, ["s3:GetObject", "s3:PutObject"], "ReadWriteUnderPrefix"),
        *readable_location_statements(readable_uris, region),
        *kms_statements(write_key_arns, read_key_arns),
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
