"""The aws plan's pre-flight checks of the account: SageMaker's per-instance-type quotas (the
applied value, else AWS's default), EC2's offerings and vCPU quota in instance mode, and the caller's
own permissions (iam:SimulatePrincipalPolicy of core.caller_policy's actions); and that policy itself,
for `sagemaker-flows plan --caller-policy`. Only reads."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from botocore.exceptions import ClientError

from backends.aws.account import AwsAccount
from backends.aws.errors import error_code, or_none
from backends.aws.iam import PipelineRoles
from backends.planning import reason
from core import caller_policy
from core.config import PipelineConfig
from core.plan import (
    Check, PlannedChange, ServedModel, denied_pairs, ec2_vcpu_quota, instance_quota_check, permissions_check,
    sagemaker_quota_name, vcpu_quota_check,
)
from core.retry import is_transient

log = logging.getLogger(__name__)
_DEFAULT_QUOTA = "sagemaker-flows:default"  # marks a quota that is AWS's default, not an applied value


class AccountChecks:
    """bucket_name(): the pipeline's bucket (never made here). roles: the pipeline's PipelineRoles, for
    the s3:// data and weights the run reads and their buckets' keys."""

    def __init__(self, account: AwsAccount, roles: PipelineRoles, bucket_name: Callable[[], str]):
        self.account, self.roles, self.bucket_name = account, roles, bucket_name

    def quota_checks(self, config: PipelineConfig, served: ServedModel | None,
                      hosting: list[PlannedChange], trains: bool = True) -> list[Check]:
        """SageMaker's per-type instance quotas: training at max_parallel_jobs at once (when the run trains),
        the endpoint at its maximum capacity (and, while a blue/green update runs, the new fleet beside the
        old one). A type with no quota in the region, applied or default, is not offered there."""
        region = self.account.region
        training, scaling, endpoint = config.training, config.autoscaling, config.hosting
        need = scaling.max_capacity if scaling.enabled else endpoint.initial_instance_count
        updating = any(c.kind == "endpoint" and c.action == "update" for c in hosting)
        if updating and served is not None and served.instance_type == endpoint.instance_type:
            need = max(need, 2 * served.instance_count)
        wanted = [("endpoint instances", endpoint.instance_type, "endpoint", need, "hosting.instance_type",
                   "autoscaling.max_capacity" if scaling.enabled else "hosting.initial_instance_count")]
        if trains and training.mode == "tuning":
            wanted.insert(0, ("training instances", training.instance_type, "training job",
                              training.tuning.max_parallel_jobs, "training.instance_type",
                              "training.tuning.max_parallel_jobs"))
        quotas, defaults_unread = self._sagemaker_quotas({sagemaker_quota_name(t, usage) for _, t, usage, *_ in wanted})
        checks = []
        for name, instance_type, usage, count, setting, lower in wanted:
            quota_name = sagemaker_quota_name(instance_type, usage)
            quota = quotas.get(quota_name)
            if quota is None and defaults_unread:
                checks.append(Check(name, "warn", f"Service Quotas lists no applied value of \"{quota_name}\" and its "
                                                  f"default could not be read ({defaults_unread}): look it up in "
                                                  "the Service Quotas console"))
                continue
            check = instance_quota_check(name, instance_type, usage, count, quota, region, setting, lower)
            if quota is not None and quota.get(_DEFAULT_QUOTA):
                check = replace(check, message=f"{check.message} (AWS's default: the account has no applied value)")
            checks.append(check)
        return checks

    def _sagemaker_quotas(self, wanted: set[str]) -> tuple[dict[str, dict], str | None]:
        """SageMaker's quotas by name, and why AWS's defaults could not be read (None: they could, or were not
        needed). ListServiceQuotas leaves out the quotas without an applied value; for those the default
        (ListAWSDefaultServiceQuotas) is the quota."""
        client = self.account.client("service-quotas")
        quotas = {q["QuotaName"]: q for page in client.get_paginator("list_service_quotas").paginate(
            ServiceCode="sagemaker") for q in page.get("Quotas", [])}
        if wanted <= quotas.keys():
            return quotas, None
        try:
            for page in client.get_paginator("list_aws_default_service_quotas").paginate(ServiceCode="sagemaker"):
                for quota in page.get("Quotas", []):
                    quotas.setdefault(quota["QuotaName"], {**quota, _DEFAULT_QUOTA: True})
        except ClientError as exc:
            if is_transient(exc):
                raise
            log.info("plan: cannot list SageMaker's default quotas: %s", reason(exc))
            return quotas, reason(exc)
        return quotas, None

    def ec2_checks(self, config: PipelineConfig) -> list[Check]:
        """Instance mode: the EC2 type is offered in the region and one instance fits its vCPU quota."""
        ec2, region = self.account.client("ec2"), self.account.region
        instance_type = config.training.ec2_instance_type
        offered = ec2.describe_instance_type_offerings(
            LocationType="region", Filters=[{"Name": "instance-type", "Values": [instance_type]}])
        if not offered.get("InstanceTypeOfferings"):
            return [Check("EC2 instance type", "fail", f"training.ec2_instance_type {instance_type} is not offered in "
                                                       f"{region}: choose another")]
        described = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"][0]
        vcpus = described["VCpuInfo"]["DefaultVCpus"]
        quota = ec2_vcpu_quota(instance_type)
        value = None
        if quota is not None:
            found = or_none(self.account.client("service-quotas").get_service_quota, ServiceCode="ec2",
                            QuotaCode=quota[0])
            value = float(found["Quota"]["Value"]) if found else None
        return [Check("EC2 instance type", "pass", f"{instance_type} is offered in {region}"),
                vcpu_quota_check(instance_type, int(vcpus), value, region)]

    def caller_policies(self, config: PipelineConfig) -> dict[str, dict]:
        """The least-privilege identity policy of whoever runs `config` as managed policies by name
        (core.caller_policy.caller_policies), for the bucket and SSE-KMS keys as they are now, the caller allowed to
        simulate its own policy."""
        bucket = self.bucket_name()
        keys = self.roles.key_arns([f"s3://{bucket}/", *self.roles.readable_uris])
        caller = self.account.client("sts").get_caller_identity()["Arn"]
        return caller_policy.caller_policies(config.names, self.account.account_id, self.account.region, bucket,
                                        mode=config.training.mode, readable_uris=self.roles.readable_uris,
                                        key_arns=keys, caller_arn=self._principal(caller))

    def policy_arn(self, name: str) -> str:
        """The ARN a managed policy called `name` has in this account."""
        return caller_policy.policy_arn(self.account.region, self.account.account_id, name)

    def _principal(self, caller: str) -> str | None:
        """The caller's principal; for a role, its own ARN (the session's lacks the role's path) when the
        caller may read it."""
        principal = caller_policy.caller_principal_arn(caller)
        if principal is None or ":role/" not in principal:
            return principal
        try:
            found = or_none(self.account.client("iam").get_role, RoleName=principal.rsplit("/", 1)[1])
        except ClientError as exc:
            log.info("plan: cannot read the caller's role (%s); using %s", error_code(exc), principal)
            return principal
        return found["Role"]["Arn"] if found else principal

    def permissions(self, config: PipelineConfig, bucket: str, keys: list[str], training: bool = True) -> Check:
        """SimulatePrincipalPolicy of the caller's principal on everything the run does
        (core.caller_policy.caller_actions; a run that trains nothing, without what training needs)."""
        iam = self.account.client("iam")
        caller = self.account.client("sts").get_caller_identity()["Arn"]
        principal = self._principal(caller)
        if principal is None:
            return Check("caller permissions", "warn", f"{caller} cannot be simulated (the root user or a federated "
                                                       "user): compare its permissions with `sagemaker-flows plan "
                                                       "--caller-policy`")
        actions = [a for a in caller_policy.caller_actions(
            config.names, self.account.account_id, self.account.region, bucket, mode=config.training.mode,
            readable_uris=self.roles.readable_uris, key_arns=keys, caller_arn=principal)
            if not a.teardown and (training or not a.training)]
        denied: list[tuple[str, str, str]] = []
        for action in actions:
            params: dict = {"PolicySourceArn": principal, "ActionNames": list(action.actions)}
            if action.resources != ("*",):
                params["ResourceArns"] = list(action.resources)
            if action.context:
                params["ContextEntries"] = [{"ContextKeyName": key, "ContextKeyValues": list(values),
                                             "ContextKeyType": "string" if len(values) == 1 else "stringList"}
                                            for key, values in action.context]
            for page in iam.get_paginator("simulate_principal_policy").paginate(**params):
                denied += denied_pairs(page.get("EvaluationResults", []))
        return permissions_check(principal, denied, sum(len(a.actions) for a in actions))
