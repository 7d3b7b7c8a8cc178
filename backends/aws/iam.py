"""IAM roles and instance profiles, each function idempotent (the client is passed in, never created
here), and PipelineRoles: the three roles of one pipeline, with policies built by core/iam.py from
the resources they guard.

Every function converges: a second call with the same arguments makes no write call.

Nothing here waits for IAM's eventual consistency. A new role or instance profile is refused for a
few seconds (at worst about two minutes) by the service that is to use it, and every create that
passes one retries exactly that refusal (backends.aws.errors.while_role_propagates: SageMaker's
"Could not assume role", Lambda's "cannot be assumed by Lambda", EC2's "Invalid IAM Instance
Profile"). A changed policy takes effect within seconds, long before the job, endpoint or function
it is for starts reading with it. A fixed sleep after every change would add its delay to every
run and still not be a guarantee.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

from botocore.exceptions import ClientError

from backends.aws.errors import already_exists, error_code, or_none
from core import iam as policies
from core.iam import UNAVOIDABLE_WILDCARD_SIDS, assume_role_policy, wildcard_resources
from core.names import PipelineNames

log = logging.getLogger(__name__)
MANAGED_TAG = "sagemaker-flows:managed"


def canonical_policy(document) -> str:
    """Compare documents by meaning: boto3 may hand them back as dicts or JSON strings, and
    AWS treats ["x"] like "x" and ignores the order of action/resource lists."""
    def norm(value):
        if isinstance(value, dict):
            return {key: norm(item) for key, item in value.items()}
        if isinstance(value, list):
            items = [norm(item) for item in value]
            if all(isinstance(item, str) for item in items):
                items = sorted(set(items))
            return items[0] if len(items) == 1 else items
        return value
    return json.dumps(norm(json.loads(document) if isinstance(document, str) else document), sort_keys=True)


def _get_role(iam, name: str) -> dict | None:
    found = or_none(iam.get_role, RoleName=name)
    return found["Role"] if found else None


def _inline_policy(iam, role_name: str, policy_name: str):
    found = or_none(iam.get_role_policy, RoleName=role_name, PolicyName=policy_name)
    return found["PolicyDocument"] if found else None


def _paginate(iam, operation: str, key: str, **kwargs) -> list:
    return [item for page in iam.get_paginator(operation).paginate(**kwargs) for item in page[key]]


def ensure_role(iam, name: str, trusted_service: str, policy_name: str, policy_document: dict,
                tags: dict[str, str]) -> str:
    """Create or converge a role trusted by one service, with one inline policy and our tags; its ARN."""
    unexpected = [sid for sid in wildcard_resources(policy_document) if sid not in UNAVOIDABLE_WILDCARD_SIDS]
    if unexpected:
        log.warning("policy %s of role %s grants on Resource '*' in %s", policy_name, name, ", ".join(unexpected))
    trust = assume_role_policy(trusted_service)
    wanted_tags = {**tags, MANAGED_TAG: "true"}
    created = False
    role = _get_role(iam, name)
    if role is None:
        try:
            role = iam.create_role(
                RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), Description="Managed by sagemaker-flows",
                Tags=[{"Key": k, "Value": v} for k, v in wanted_tags.items()])["Role"]
            created = True
        except ClientError as error:  # created meanwhile by a concurrent run: converge it instead
            if not already_exists(error):
                raise
            role = _get_role(iam, name)
    if not created:
        if canonical_policy(role["AssumeRolePolicyDocument"]) != canonical_policy(trust):
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
        current_tags = {t["Key"]: t["Value"] for t in _paginate(iam, "list_role_tags", "Tags", RoleName=name)}
        stale = {k: v for k, v in wanted_tags.items() if current_tags.get(k) != v}
        if stale:
            iam.tag_role(RoleName=name, Tags=[{"Key": k, "Value": v} for k, v in stale.items()])
    current_policy = _inline_policy(iam, name, policy_name)
    if current_policy is None or canonical_policy(current_policy) != canonical_policy(policy_document):
        iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(policy_document))
    return role["Arn"]


def ensure_instance_profile(iam, name: str, role_name: str) -> str:
    """Create or converge an instance profile holding exactly `role_name`; its ARN.

    botocore resends a request whose connection dropped, and IAM answers the resend of one that went
    through as it answers any repeat: EntityAlreadyExists for the profile, LimitExceeded ("Cannot exceed
    quota for InstanceSessionsPerInstanceProfile: 1") for the role. Both are read as done, once the
    profile, read again, shows it.
    """
    found = or_none(iam.get_instance_profile, InstanceProfileName=name)
    if found:
        profile = found["InstanceProfile"]
    else:
        try:
            profile = iam.create_instance_profile(
                InstanceProfileName=name, Tags=[{"Key": MANAGED_TAG, "Value": "true"}])["InstanceProfile"]
        except ClientError as error:  # a resend, or a concurrent run: converge what exists
            if not already_exists(error):
                raise
            profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    attached = [r["RoleName"] for r in profile.get("Roles", [])]
    # A profile holds at most one role: swap out any other before adding ours.
    for other in attached:
        if other != role_name:
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=other)
    if role_name not in attached:
        try:
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role_name)
        except ClientError as error:  # full: by our role (a resend that went through), or by another
            roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"].get("Roles", [])
            if error_code(error) != "LimitExceeded" or [r["RoleName"] for r in roles] != [role_name]:
                raise
    return profile["Arn"]


def delete_role(iam, name: str) -> bool:
    """Remove the role from its instance profiles, drop its policies and delete it; False if it did not exist."""
    if _get_role(iam, name) is None:
        return False
    for profile in _paginate(iam, "list_instance_profiles_for_role", "InstanceProfiles", RoleName=name):
        iam.remove_role_from_instance_profile(InstanceProfileName=profile["InstanceProfileName"], RoleName=name)
    for policy_name in _paginate(iam, "list_role_policies", "PolicyNames", RoleName=name):
        iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
    for policy in _paginate(iam, "list_attached_role_policies", "AttachedPolicies", RoleName=name):
        iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
    iam.delete_role(RoleName=name)
    return True


def delete_instance_profile(iam, name: str) -> bool:
    """Detach its role and delete the instance profile; False if it did not exist."""
    found = or_none(iam.get_instance_profile, InstanceProfileName=name)
    if found is None:
        return False
    profile = found["InstanceProfile"]
    for role in profile.get("Roles", []):
        iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
    iam.delete_instance_profile(InstanceProfileName=name)
    return True


# The inline policy each role of a pipeline carries.
POLICY_NAMES = {"sagemaker": "sagemaker-flows-execution", "ec2": "sagemaker-flows-ec2-training",
                "lambda": "sagemaker-flows-invoke-endpoint"}


class PipelineRoles:
    """The roles one pipeline's AWS resources run as: SageMaker jobs and endpoints, the EC2 training
    instance (through its instance profile), and the Lambda function.

    readable_uris: s3:// locations the training roles read besides the pipeline's prefix (a data
    source staged where it is, s3:// pretrained weights; a prefix ends in "/"); those under the
    prefix need nothing more. bucket_key(bucket): the ARN of the KMS key a bucket's SSE-KMS uses,
    None for none (S3Storage.bucket_key_arn); the roles may use the keys of the buckets they touch.
    """

    def __init__(self, iam, names: PipelineNames, bucket: Callable[[], str], account_id: Callable[[], str],
                 region: str, *, readable_uris: Sequence[str] = (),
                 bucket_key: Callable[[str], str | None] = lambda bucket: None):
        self.iam, self.names, self.region = iam, names, region
        self._bucket, self._account_id = bucket, account_id
        self.readable_uris = tuple(readable_uris)
        self._bucket_key = bucket_key
        self._keys: dict[str, str | None] = {}

    def _ensure(self, kind: str, document: dict) -> str:
        return ensure_role(self.iam, self.names.role(kind), policies.SERVICE_FOR_ROLE[kind], POLICY_NAMES[kind],
                           document, self.names.tags)

    def key_arns(self, uris: Sequence[str]) -> list[str]:
        """The SSE-KMS keys of the buckets of `uris`, each bucket asked once per pipeline run."""
        arns = []
        for uri in uris:
            bucket = uri[5:].split("/", 1)[0]
            if bucket not in self._keys:
                self._keys[bucket] = self._bucket_key(bucket)
            if self._keys[bucket] and self._keys[bucket] not in arns:
                arns.append(self._keys[bucket])
        return arns

    # -- the documents (from the bucket's name: nothing is made; planning compares them too) --------
    def _training_access(self, bucket: str) -> dict:
        """The keyword arguments of the training roles' documents: what they read outside the
        prefix, and the KMS keys of what they write (the pipeline's bucket) and read."""
        extra = policies.locations_outside(self.names.prefix_uri(bucket), self.readable_uris)
        return {"readable_uris": extra, "write_key_arns": self.key_arns([f"s3://{bucket}/"]),
                "read_key_arns": self.key_arns(extra)}

    def sagemaker_document(self, bucket: str) -> dict:
        return policies.sagemaker_execution_policy(bucket, self.names.prefix, self._account_id(), self.region,
                                                   **self._training_access(bucket))

    def ec2_document(self, bucket: str) -> dict:
        return policies.ec2_training_policy(bucket, self.names.prefix, self._account_id(), self.region,
                                            **self._training_access(bucket))

    def lambda_document(self, bucket: str, function_name: str, endpoint_name: str,
                        s3_prefixes: Sequence[str] = ()) -> dict:
        """It invokes the endpoint and reads exactly `s3_prefixes` (by default the pipeline's own
        prefix), with their buckets' SSE-KMS keys."""
        endpoint_arn = policies.endpoint_arn(self.region, self._account_id(), endpoint_name)
        readable = list(s3_prefixes) or [self.names.prefix_uri(bucket)]
        return policies.lambda_policy(endpoint_arn, readable, self._account_id(), self.region, function_name,
                                      read_key_arns=self.key_arns(readable))

    # -- the roles ------------------------------------------------------------------------------
    def sagemaker_role_arn(self) -> str:
        return self._ensure("sagemaker", self.sagemaker_document(self._bucket()))

    def ec2_instance_profile_arn(self) -> str:
        self._ensure("ec2", self.ec2_document(self._bucket()))
        name = self.names.role("ec2")
        return ensure_instance_profile(self.iam, name, name)

    def lambda_role_arn(self, function_name: str, endpoint_name: str, s3_prefixes: Sequence[str] = ()) -> str:
        return self._ensure("lambda", self.lambda_document(self._bucket(), function_name, endpoint_name, s3_prefixes))

    def delete_all(self) -> list[str]:
        """Remove the roles and the instance profile; what was removed."""
        removed = []
        if delete_instance_profile(self.iam, self.names.role("ec2")):
            removed.append(f"instance profile {self.names.role('ec2')}")
        for kind in ("lambda", "sagemaker", "ec2"):
            if delete_role(self.iam, self.names.role(kind)):
                removed.append(f"role {self.names.role(kind)}")
        return removed
