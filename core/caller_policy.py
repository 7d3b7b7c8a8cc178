"""What whoever runs the pipeline needs (pure; no AWS calls): caller_actions, each action on the
resources and conditions it needs, and caller_policies, the same as managed policies of one service
group each (IAM allows 6,144 characters in one), printed by `sagemaker-flows plan --caller-policy` and
simulated by the plan's pre-flight check. Wildcard resources only in CALLER_WILDCARD_SIDS statements.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

from core.iam import (
    SERVICE_FOR_ROLE, clean_prefix, kms_statements, locations_outside, partition, policy_document,
    readable_location_statements, role_arn, split_s3_uri,
)
from core.names import PipelineNames
from core.traffic import alarm_names

# -- the caller: who runs the pipeline ---------------------------------------------------------
# Statements of the caller's policy whose actions AWS authorizes on no particular resource: List and
# Describe calls, Lambda's account settings, Service Quotas' listing, Application Auto Scaling.
CALLER_WILDCARD_SIDS = frozenset({
    "SageMakerListsOnlyAllowWildcard", "Ec2DescribesOnlyAllowWildcard", "AutoscalingDescribesOnlyAllowWildcard",
    "SageMakerScalingOnly", "LambdaAccountSettingsOnlyAllowWildcard", "QuotaReadsOnlyAllowWildcard",
    "Ec2QuotaOnlyAllowsWildcard",
})
AUTOSCALING_SERVICE = "sagemaker.application-autoscaling.amazonaws.com"


@dataclass(frozen=True)
class CallerAction:
    """Actions the caller needs on exactly these resources (each action applies to each resource, so a
    policy simulation of the pairs is meaningful). `condition` narrows the grant in the policy; `context`
    holds the values a run's calls carry for those condition keys, for the simulation. `teardown`:
    needed by the teardown flow only. `training`: needed to train, not to serve a registered version (a
    rollback's plan leaves these out)."""

    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: dict | None = None
    context: tuple[tuple[str, tuple[str, ...]], ...] = ()
    teardown: bool = False
    training: bool = False

    def statement(self) -> dict:
        statement = {"Sid": self.sid, "Effect": "Allow", "Action": list(self.actions),
                     "Resource": self.resources[0] if len(self.resources) == 1 else list(self.resources)}
        if self.condition:
            statement["Condition"] = self.condition
        return statement


def caller_principal_arn(caller_arn: str) -> str | None:
    """The IAM principal whose policies a caller's calls are judged by (GetCallerIdentity's Arn): a user
    as it is, an assumed-role session as its role (arn:aws:iam::ACCOUNT:role/NAME, without the role's
    path, which the session ARN does not carry). None for the root user and federated users, which
    SimulatePrincipalPolicy cannot simulate."""
    match = re.fullmatch(r"arn:([\w-]+):sts::(\d{12}):assumed-role/([^/]+)/.+", caller_arn)
    if match:
        partition, account, role = match.groups()
        return f"arn:{partition}:iam::{account}:role/{role}"
    if re.fullmatch(r"arn:[\w-]+:iam::\d{12}:(user|role)/.+", caller_arn):
        return caller_arn
    return None


def _as_actions(statements: Sequence[dict], context: dict[str, tuple[str, ...]]) -> list[CallerAction]:
    """Policy statements made for a role (readable_location_statements, kms_statements) as caller actions."""
    actions = []
    for s in statements:
        action, resource = s["Action"], s["Resource"]
        keys = [key for operator in (s.get("Condition") or {}).values() for key in operator]
        actions.append(CallerAction(s["Sid"], tuple([action] if isinstance(action, str) else action),
                                    tuple([resource] if isinstance(resource, str) else resource),
                                    s.get("Condition"), tuple((k, context[k]) for k in keys if k in context)))
    return actions


def _tag_condition(names: PipelineNames, key: str) -> tuple[dict, tuple[tuple[str, tuple[str, ...]], ...]]:
    """(condition, simulation context) holding a request's or resource's tags (`key`: aws:RequestTag or
    aws:ResourceTag) to the pipeline's."""
    values = {f"{key}/{tag}": value for tag, value in names.tags.items()}
    return {"StringEquals": values}, tuple((k, (v,)) for k, v in values.items())


def caller_actions(names: PipelineNames, account_id: str, region: str, bucket: str, *, mode: str = "tuning",
                   readable_uris: Sequence[str] = (), key_arns: Sequence[str] = (), caller_arn: str | None = None,
                   alias: str = "live") -> list[CallerAction]:
    """Everything the caller of train_and_deploy, retrain, rollback, loadtest and teardown does in AWS, on
    the resources it does it to: the pipeline's bucket and prefix, its roles (and passing each to its own
    service only), its tuning or EC2 training jobs, model package group, endpoint (models, configs,
    alarms, autoscaling, invocations), function, its versions and alias; and the pre-flight checks' own
    reads (the encryption of the buckets it reads, quotas, its own policy).

    mode: training.mode ("tuning" or "instance"). readable_uris: s3:// data and weights outside the
    prefix (a prefix ends in "/"). key_arns: SSE-KMS keys of the buckets involved. caller_arn: the
    caller's principal (caller_principal_arn), which may simulate its own policy.
    """
    part, prefix = partition(region), clean_prefix(names.prefix)
    sm = f"arn:{part}:sagemaker:{region}:{account_id}"
    endpoint, group = names.endpoint.lower(), names.model_group.lower()
    function = f"arn:{part}:lambda:{region}:{account_id}:function:{names.function}"
    roles = {kind: role_arn(account_id, names.role(kind), part)
             for kind in ("sagemaker", "lambda", *(("ec2",) if mode == "instance" else ()))}
    bucket_arn = f"arn:{part}:s3:::{bucket}"
    alarms = [f"arn:{part}:cloudwatch:{region}:{account_id}:alarm:{name}" for name in alarm_names(names.endpoint)]
    other_buckets = sorted({split_s3_uri(uri)[0] for uri in readable_uris} - {bucket})
    found: list[CallerAction] = [
        CallerAction("PipelineBucket", ("s3:ListBucket", "s3:GetEncryptionConfiguration", "s3:CreateBucket",
                                        "s3:PutBucketPublicAccessBlock", "s3:PutEncryptionConfiguration"),
                     (bucket_arn,)),
        # AbortMultipartUpload: boto3 aborts an upload above the multipart threshold that failed.
        CallerAction("PipelineObjects", ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"),
                     (f"{bucket_arn}/{prefix}/*",)),
        *_as_actions(readable_location_statements(locations_outside(names.prefix_uri(bucket), readable_uris),
                                                  region),
                     {"s3:prefix": tuple(clean_prefix(uri[5:].split("/", 1)[1]) for uri in readable_uris
                                         if uri.endswith("/") and uri[5:].split("/", 1)[1].strip("/"))}),
        *([CallerAction("ReadBucketsEncryption", ("s3:GetEncryptionConfiguration",),  # their SSE-KMS keys
                        tuple(f"arn:{part}:s3:::{b}" for b in other_buckets))] if other_buckets else []),
        CallerAction("PipelineRoles", ("iam:GetRole", "iam:CreateRole", "iam:TagRole", "iam:ListRoleTags",
                                       "iam:UpdateAssumeRolePolicy", "iam:GetRolePolicy", "iam:PutRolePolicy"),
                     tuple(roles.values())),
        CallerAction("RemovePipelineRoles", ("iam:DeleteRole", "iam:DeleteRolePolicy", "iam:ListRolePolicies",
                                             "iam:ListAttachedRolePolicies", "iam:DetachRolePolicy",
                                             "iam:ListInstanceProfilesForRole"),
                     tuple(roles.values()), teardown=True),
    ]
    for kind, arn in roles.items():  # each role only to the service that runs as it
        service = SERVICE_FOR_ROLE[kind]
        # AddRoleToInstanceProfile also asks for iam:PassRole on the EC2 role, in a request that passes it
        # to no service (no iam:PassedToService): IfExists lets that one through, and no other service.
        operator = "StringEqualsIfExists" if kind == "ec2" else "StringEquals"
        found.append(CallerAction(f"Pass{kind.capitalize()}RoleToItsService", ("iam:PassRole",), (arn,),
                                  {operator: {"iam:PassedToService": service}},
                                  (("iam:PassedToService", (service,)),), training=kind == "ec2"))
    if key_arns:
        found.append(CallerAction("DescribeBucketKeys", ("kms:DescribeKey",), tuple(sorted(set(key_arns)))))
        found += _as_actions(kms_statements(write_key_arns=key_arns),
                             {"kms:ViaService": (f"s3.{region}.amazonaws.com",)})
    if mode == "instance":
        profile = f"arn:{part}:iam::{account_id}:instance-profile/{names.role('ec2')}"
        ec2 = f"arn:{part}:ec2:{region}:{account_id}"
        found += [
            CallerAction("TrainingInstanceProfile", ("iam:GetInstanceProfile", "iam:CreateInstanceProfile",
                                                     "iam:TagInstanceProfile", "iam:AddRoleToInstanceProfile",
                                                     "iam:RemoveRoleFromInstanceProfile"), (profile,), training=True),
            CallerAction("RemoveTrainingInstanceProfile", ("iam:DeleteInstanceProfile",), (profile,), teardown=True),
            CallerAction("LaunchTrainingInstance", ("ec2:RunInstances",),
                         (f"{ec2}:instance/*", f"{ec2}:volume/*", f"{ec2}:network-interface/*", f"{ec2}:subnet/*",
                          f"{ec2}:security-group/*", f"arn:{part}:ec2:{region}::image/*"), training=True),
            CallerAction("TagTrainingInstanceAtLaunch", ("ec2:CreateTags",), (f"{ec2}:instance/*", f"{ec2}:volume/*"),
                         {"StringEquals": {"ec2:CreateAction": "RunInstances"}},
                         (("ec2:CreateAction", ("RunInstances",)),), training=True),
            CallerAction("TerminatePipelineInstances", ("ec2:TerminateInstances",), (f"{ec2}:instance/*",),
                         {"StringEquals": {f"aws:ResourceTag/{k}": v for k, v in names.tags.items()}},
                         tuple((f"aws:ResourceTag/{k}", (v,)) for k, v in names.tags.items()), training=True),
            CallerAction("Ec2DescribesOnlyAllowWildcard", ("ec2:DescribeInstances", "ec2:DescribeInstanceTypes",
                                                           "ec2:DescribeInstanceTypeOfferings"), ("*",), training=True),
            # A public parameter's ARN has no account ("region::parameter/..."); "*" matches that too.
            CallerAction("DeepLearningAmiParameter", ("ssm:GetParameter",),
                         (f"arn:{part}:ssm:{region}:*:parameter/aws/service/deeplearning/*",), training=True),
            # GetServiceQuota has no resource-level permissions: a quota's ARN in Resource never matches.
            CallerAction("Ec2QuotaOnlyAllowsWildcard", ("servicequotas:GetServiceQuota",), ("*",), training=True),
        ]
    else:
        # A tuning job's name (32 characters) holds the stage but not the project (core.names), so the
        # names match every project's jobs of the stage: what creates, tags or stops them is also held
        # to the pipeline's tags (which its jobs, and the training jobs they start, carry). The reads stay
        # by name: a re-run reads the tags of each job named like the stage's to find its own.
        tuning = names.tuning_job_prefix.lower()
        jobs, trials = f"{sm}:hyper-parameter-tuning-job/{tuning}-*", f"{sm}:training-job/{tuning}-*"
        request_tags, resource_tags = _tag_condition(names, "aws:RequestTag"), _tag_condition(names, "aws:ResourceTag")
        found += [
            CallerAction("CreateTuningJobsWithPipelineTags", ("sagemaker:CreateHyperParameterTuningJob",
                                                              "sagemaker:AddTags"), (jobs,), *request_tags,
                         training=True),
            CallerAction("TagTrialTrainingJobsWithPipelineTags", ("sagemaker:AddTags",), (trials,), *request_tags,
                         training=True),
            CallerAction("StopPipelineTuningJobs", ("sagemaker:StopHyperParameterTuningJob",), (jobs,),
                         *resource_tags, training=True),
            CallerAction("ReadStageTuningJobs", ("sagemaker:DescribeHyperParameterTuningJob",
                                                 "sagemaker:ListTrainingJobsForHyperParameterTuningJob",
                                                 "sagemaker:ListTags"), (jobs,), training=True),
            CallerAction("ReadStageTrialTrainingJobs", ("sagemaker:DescribeTrainingJob",), (trials,), training=True),
        ]
    found += [
        CallerAction("SageMakerListsOnlyAllowWildcard", ("sagemaker:ListHyperParameterTuningJobs",
                                                         "sagemaker:ListModelPackages", "sagemaker:ListModels",
                                                         "sagemaker:ListEndpointConfigs"), ("*",)),
        CallerAction("ModelPackageGroup", ("sagemaker:CreateModelPackageGroup", "sagemaker:DescribeModelPackageGroup",
                                           "sagemaker:CreateModelPackage"),
                     (f"{sm}:model-package-group/{group}",)),
        CallerAction("ModelPackages", ("sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage",
                                       "sagemaker:UpdateModelPackage"), (f"{sm}:model-package/{group}/*",)),
        CallerAction("EndpointModels", ("sagemaker:CreateModel", "sagemaker:DescribeModel", "sagemaker:AddTags"),
                     (f"{sm}:model/{endpoint}-v*",)),
        CallerAction("EndpointConfigs", ("sagemaker:CreateEndpointConfig", "sagemaker:DescribeEndpointConfig",
                                         "sagemaker:AddTags"), (f"{sm}:endpoint-config/{endpoint}-cfg-*",)),
        # InvokeEndpoint: `sagemaker-flows loadtest` sends its requests to the endpoint by default.
        CallerAction("Endpoint", ("sagemaker:DescribeEndpoint", "sagemaker:AddTags", "sagemaker:InvokeEndpoint"),
                     (f"{sm}:endpoint/{endpoint}",)),
        CallerAction("CreateAndUpdateEndpoint", ("sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint"),
                     (f"{sm}:endpoint/{endpoint}", f"{sm}:endpoint-config/{endpoint}-cfg-*")),
        CallerAction("RemoveEndpoint", ("sagemaker:DeleteEndpoint", "sagemaker:DeleteEndpointConfig",
                                        "sagemaker:DeleteModel"),
                     (f"{sm}:endpoint/{endpoint}", f"{sm}:endpoint-config/{endpoint}-cfg-*",
                      f"{sm}:model/{endpoint}-v*"), teardown=True),
        CallerAction("RollbackAlarms", ("cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms",
                                        "cloudwatch:TagResource"), tuple(alarms)),
        CallerAction("RemoveRollbackAlarms", ("cloudwatch:DeleteAlarms",), tuple(alarms), teardown=True),
        # Target tracking makes and removes its own alarms in the caller's name.
        CallerAction("TargetTrackingAlarms", ("cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms",
                                              "cloudwatch:DeleteAlarms"),
                     (f"arn:{part}:cloudwatch:{region}:{account_id}:alarm:"
                      f"TargetTracking-endpoint/{names.endpoint}/*",)),
        CallerAction("AutoscalingDescribesOnlyAllowWildcard", ("application-autoscaling:DescribeScalableTargets",
                                                               "application-autoscaling:DescribeScalingPolicies"),
                     ("*",)),
        # A scalable target's ARN holds an id AWS makes when it is registered: the service namespace is
        # what keeps these to SageMaker's targets (no ECS service, DynamoDB table ... of the account).
        CallerAction("SageMakerScalingOnly", (
            "application-autoscaling:RegisterScalableTarget", "application-autoscaling:PutScalingPolicy",
            "application-autoscaling:DeleteScalingPolicy", "application-autoscaling:DeregisterScalableTarget"),
                     ("*",), {"StringEquals": {"application-autoscaling:service-namespace": "sagemaker"}},
                     (("application-autoscaling:service-namespace", ("sagemaker",)),)),
        CallerAction("AutoscalingServiceLinkedRole", ("iam:CreateServiceLinkedRole",),
                     (f"arn:{part}:iam::{account_id}:role/aws-service-role/{AUTOSCALING_SERVICE}/"
                      "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",),
                     {"StringEquals": {"iam:AWSServiceName": AUTOSCALING_SERVICE}},
                     (("iam:AWSServiceName", (AUTOSCALING_SERVICE,)),)),
        CallerAction("PipelineFunction", (
            "lambda:GetFunction", "lambda:GetFunctionConfiguration", "lambda:CreateFunction",
            "lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration", "lambda:PublishVersion",
            "lambda:ListVersionsByFunction", "lambda:GetAlias", "lambda:CreateAlias", "lambda:UpdateAlias",
            "lambda:GetFunctionConcurrency", "lambda:PutFunctionConcurrency", "lambda:DeleteFunctionConcurrency",
            "lambda:ListTags", "lambda:TagResource"), (function,)),
        # IAM judges a call with a Qualifier (the published_version_active waiter reads version N) against
        # function:NAME:N, which the unqualified ARN does not match.
        CallerAction("PipelineFunctionVersions", ("lambda:GetFunction", "lambda:GetFunctionConfiguration"),
                     (f"{function}:*",)),
        CallerAction("PipelineFunctionAlias", ("lambda:GetProvisionedConcurrencyConfig",
                                               "lambda:PutProvisionedConcurrencyConfig",
                                               "lambda:DeleteProvisionedConcurrencyConfig", "lambda:InvokeFunction"),
                     (f"{function}:{alias}",)),
        CallerAction("RemovePipelineFunction", ("lambda:DeleteFunction", "lambda:ListAliases", "lambda:DeleteAlias"),
                     (function,), teardown=True),
        CallerAction("LambdaAccountSettingsOnlyAllowWildcard", ("lambda:GetAccountSettings",), ("*",)),
        CallerAction("QuotaReadsOnlyAllowWildcard", ("servicequotas:ListServiceQuotas",
                                                        "servicequotas:ListAWSDefaultServiceQuotas"), ("*",)),
    ]
    if caller_arn:  # a role also reads its own ARN, which has the path its session's ARN lacks
        own = ("iam:SimulatePrincipalPolicy", *(("iam:GetRole",) if ":role/" in caller_arn else ()))
        found.append(CallerAction("SimulateOwnPolicy", own, (caller_arn,)))
    return found


# The caller's policy, one managed policy per group of services (IAM: at most 6,144 characters without
# whitespace in a managed policy, 2,048 in all of a user's inline policies; the whole is over 7,000).
MANAGED_POLICY_MAX = 6144
CALLER_POLICY_GROUPS = {"s3": "storage", "kms": "storage", "iam": "roles", "sagemaker": "sagemaker",
                        "ec2": "instances", "ssm": "instances", "lambda": "function", "cloudwatch": "scaling",
                        "application-autoscaling": "scaling", "servicequotas": "scaling"}


def policy_size(document: dict) -> int:
    """What IAM counts against its size limits: the document's characters, whitespace left out."""
    return len(re.sub(r"\s", "", json.dumps(document)))


def caller_policy_name(names: PipelineNames, group: str) -> str:
    return f"{names.project}-{names.stage}-caller-{group}"[:128]


def policy_arn(region: str, account_id: str, name: str) -> str:
    return f"arn:{partition(region)}:iam::{account_id}:policy/{name}"


def caller_policies(names: PipelineNames, account_id: str, region: str, bucket: str, **options) -> dict[str, dict]:
    """The caller's least-privilege identity policy (caller_actions), as managed policies named
    `<project>-<stage>-caller-<group>`, one per group of CALLER_POLICY_GROUPS, in a stable order; a group
    over MANAGED_POLICY_MAX (many s3:// locations) goes on in `<group>-2` ... Resource "*" only in the
    statements of CALLER_WILDCARD_SIDS."""
    grouped: dict[str, list[dict]] = {}
    for action in caller_actions(names, account_id, region, bucket, **options):
        groups = {CALLER_POLICY_GROUPS[a.split(":", 1)[0]] for a in action.actions}
        if len(groups) != 1:
            raise ValueError(f"statement {action.sid} mixes the policies {sorted(groups)}")
        grouped.setdefault(groups.pop(), []).append(action.statement())
    documents: dict[str, dict] = {}
    order = list(dict.fromkeys(CALLER_POLICY_GROUPS.values()))
    for group, statements in sorted(grouped.items(), key=lambda item: order.index(item[0])):
        parts: list[list[dict]] = [[]]
        for statement in statements:
            if parts[-1] and policy_size(policy_document(*parts[-1], statement)) > MANAGED_POLICY_MAX:
                parts.append([])
            parts[-1].append(statement)
        for number, part in enumerate(parts, 1):
            document = policy_document(*part)
            if policy_size(document) > MANAGED_POLICY_MAX:
                raise ValueError(f"statement {part[0]['Sid']} alone is over IAM's {MANAGED_POLICY_MAX} characters")
            documents[caller_policy_name(names, group if number == 1 else f"{group}-{number}")] = document
    return documents
