"""IAM roles and instance profiles, each function idempotent (the client is passed in, never created
here), and PipelineRoles: the three roles of one pipeline, with policies built by core/iam.py from
the resources they guard.

Every function converges: a second call with the same arguments makes no write call.
propagation_delay_s: IAM is eventually consistent and a new role takes about 10 s before a service
can assume it (EC2 likewise refuses a fresh instance profile). Callers on real AWS pass ~10; the
default 0 suits moto. The wait happens only when something was created or changed.
"""
from __future__ import annotations

import json
import logging
import time

from collections.abc import Callable, Sequence

from botocore.exceptions import ClientError

from backends.aws.errors import error_code, or_none
from core import iam as policies
from core.iam import UNAVOIDABLE_WILDCARD_SIDS, assume_role_policy, wildcard_resources
from core.names import PipelineNames

log = logging.getLogger(__name__)
MANAGED_TAG = "sagemaker-flows:managed"


def _canonical(document) -> str:
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
                tags: dict[str, str], propagation_delay_s: float = 0) -> str:
    """Create or converge a role trusted by one service, with one inline policy and our tags; its ARN."""
    unexpected = [sid for sid in wildcard_resources(policy_document) if sid not in UNAVOIDABLE_WILDCARD_SIDS]
    if unexpected:
        log.warning("policy %s of role %s grants on Resource '*' in %s", policy_name, name, ", ".join(unexpected))
    trust = assume_role_policy(trusted_service)
    wanted_tags = {**tags, MANAGED_TAG: "true"}
    changed = False
    role = _get_role(iam, name)
    if role is None:
        try:
            role = iam.create_role(
                RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), Description="Managed by sagemaker-flows",
                Tags=[{"Key": k, "Value": v} for k, v in wanted_tags.items()])["Role"]
            changed = True
        except ClientError as error:  # created meanwhile by a concurrent run: converge it instead
            if error_code(error) != "EntityAlreadyExists":
                raise
            role = _get_role(iam, name)
    if not changed:
        if _canonical(role["AssumeRolePolicyDocument"]) != _canonical(trust):
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
            changed = True
        current_tags = {t["Key"]: t["Value"] for t in _paginate(iam, "list_role_tags", "Tags", RoleName=name)}
        stale = {k: v for k, v in wanted_tags.items() if current_tags.get(k) != v}
        if stale:
            iam.tag_role(RoleName=name, Tags=[{"Key": k, "Value": v} for k, v in stale.items()])
    current_policy = _inline_policy(iam, name, policy_name)
    if current_policy is None or _canonical(current_policy) != _canonical(policy_document):
        iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(policy_document))
        changed = True
    if changed and propagation_delay_s > 0:
        time.sleep(propagation_delay_s)
    return role["Arn"]


def ensure_instance_profile(iam, name: str, role_name: str, propagation_delay_s: float = 0) -> str:
    """Create or converge an instance profile holding exactly `role_name`; its ARN."""
    changed = False
    found = or_none(iam.get_instance_profile, InstanceProfileName=name)
    if found:
        profile = found["InstanceProfile"]
    else:
        profile = iam.create_instance_profile(
            InstanceProfileName=name, Tags=[{"Key": MANAGED_TAG, "Value": "true"}])["InstanceProfile"]
        changed = True
    attached = [r["RoleName"] for r in profile.get("Roles", [])]
    # A profile holds at most one role: swap out any other before adding ours.
    for other in attached:
        if other != role_name:
            iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=other)
    if role_name not in attached:
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role_name)
        changed = True
    if changed and propagation_delay_s > 0:
        time.sleep(propagation_delay_s)
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


class PipelineRoles:
    """The roles one pipeline's AWS resources run as: SageMaker jobs and endpoints, the EC2 training
    instance (through its instance profile), and the Lambda function."""

    def __init__(self, iam, names: PipelineNames, bucket: Callable[[], str], account_id: Callable[[], str],
                 region: str, propagation_delay_s: float = 10.0):
        self.iam, self.names, self.region = iam, names, region
        self._bucket, self._account_id = bucket, account_id
        self.propagation_delay_s = propagation_delay_s

    def _ensure(self, kind: str, service: str, policy_name: str, document: dict) -> str:
        return ensure_role(self.iam, self.names.role(kind), service, policy_name, document, self.names.tags,
                           self.propagation_delay_s)

    def sagemaker_role_arn(self) -> str:
        document = policies.sagemaker_execution_policy(self._bucket(), self.names.prefix, self._account_id(),
                                                       self.region)
        return self._ensure("sagemaker", "sagemaker.amazonaws.com", "sagemaker-flows-execution", document)

    def ec2_instance_profile_arn(self) -> str:
        document = policies.ec2_training_policy(self._bucket(), self.names.prefix, self._account_id(), self.region)
        self._ensure("ec2", "ec2.amazonaws.com", "sagemaker-flows-ec2-training", document)
        name = self.names.role("ec2")
        return ensure_instance_profile(self.iam, name, name, self.propagation_delay_s)

    def lambda_role_arn(self, function_name: str, endpoint_name: str, s3_prefixes: Sequence[str] = ()) -> str:
        """The function's role: it invokes the endpoint and reads exactly `s3_prefixes` (by default the
        pipeline's own prefix)."""
        endpoint_arn = policies.endpoint_arn(self.region, self._account_id(), endpoint_name)
        readable = list(s3_prefixes) or [self.names.prefix_uri(self._bucket())]
        document = policies.lambda_policy(endpoint_arn, readable, self._account_id(), self.region, function_name)
        return self._ensure("lambda", "lambda.amazonaws.com", "sagemaker-flows-invoke-endpoint", document)

    def delete_all(self) -> list[str]:
        """Remove the roles and the instance profile; what was removed."""
        removed = []
        if delete_instance_profile(self.iam, self.names.role("ec2")):
            removed.append(f"instance profile {self.names.role('ec2')}")
        for kind in ("lambda", "sagemaker", "ec2"):
            if delete_role(self.iam, self.names.role(kind)):
                removed.append(f"role {self.names.role(kind)}")
        return removed
