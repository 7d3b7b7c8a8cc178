"""Idempotent IAM roles and instance profiles (the client is passed in, never created here).

Every function converges: a second call with the same arguments makes no write call.
propagation_delay_s: IAM is eventually consistent and a new role takes about 10 s before a service
can assume it (EC2 likewise refuses a fresh instance profile). Callers on real AWS pass ~10; the
default 0 suits moto. The wait happens only when something was created or changed.
"""
from __future__ import annotations

import json
import logging
import time

from botocore.exceptions import ClientError

from core.iam import UNAVOIDABLE_WILDCARD_SIDS, assume_role_policy, wildcard_resources

log = logging.getLogger(__name__)
MANAGED_TAG = "sagemaker-flows:managed"


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("NoSuchEntity", "NoSuchEntityException")


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
    try:
        return iam.get_role(RoleName=name)["Role"]
    except ClientError as error:
        if _missing(error):
            return None
        raise


def _inline_policy(iam, role_name: str, policy_name: str):
    try:
        return iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
    except ClientError as error:
        if _missing(error):
            return None
        raise


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
            if error.response.get("Error", {}).get("Code") != "EntityAlreadyExists":
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
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except ClientError as error:
        if not _missing(error):
            raise
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
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except ClientError as error:
        if _missing(error):
            return False
        raise
    for role in profile.get("Roles", []):
        iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
    iam.delete_instance_profile(InstanceProfileName=name)
    return True
