"""The Planning service on AWS: what a run will create, update or keep, found by the names, tags and
configuration digests the tasks use; its costs from the price table; and the pre-flight checks that
refuse a run which would fail half-way: the data, SageMaker's per-instance-type quotas (training at
max_parallel_jobs, the endpoint at max capacity) or EC2's vCPU quota and offerings, Lambda's 100
unreserved executions, the caller's own permissions (iam:SimulatePrincipalPolicy), and an endpoint
that serves now being updated. The account's checks (quotas, EC2, permissions) are preflight.py's.

Only reads: the bucket is not made, no role is converged. Each decision that compares what exists with
what the run wants is a function of core/plan.py.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from botocore.exceptions import ClientError

from backends.aws.account import AwsAccount
from backends.aws.autoscaling import EndpointAutoscaling
from backends.aws.errors import error_code, http_status, is_not_found, or_none
from backends.aws.functions import ALIAS, HANDLER, LAMBDA_SOURCE_DIR, RUNTIME, LambdaFunctions, code_sha256, zip_source
from backends.aws.iam import MANAGED_TAG, POLICY_NAMES, PipelineRoles, canonical_policy
from backends.aws.images import inference_image_uri, training_image_uri
from backends.aws.preflight import AccountChecks
from backends.aws.registry import ModelRegistry
from backends.aws.sagemaker_tuning import SageMakerTuning
from backends.aws.tuning_conversions import (
    grid_size, source_digest, trial_from_summary, trial_index, tuning_digest,
)
from backends.aws.storage import S3Storage
from backends.aws.training import TRAINING_DIR
from backends.planning import attempted, concurrency_check, plan_dataset, plan_weights, released_version_change
from backends.requests import tuning_request
from backends.types import ModelVersion, TrialSummary
from core import iam as policies
from core.best_trial import NoSuccessfulTrialError, choose_best_trial
from core.config import PipelineConfig
from core.costs import estimate
from core.functions import function_environment, readable_s3_prefixes
from core.names import PipelineNames
from core.plan import (
    Check, Plan, PlannedChange, ServedModel, WantedModel, change, differences, endpoint_changes, endpoint_update_check,
    setting_change, tuning_job_change, without_training,
)
from core.pricing import load_prices
from core.scaling import policy_name, resource_id, scalable_target, target_tracking_policy
from core.traffic import rollback_alarms

log = logging.getLogger(__name__)


class AwsPlanning:
    """bucket_name(): the pipeline's bucket as the backend names it (never made here). roles: the
    pipeline's PipelineRoles, whose documents (and s3:// data and weights they read) are compared."""

    def __init__(self, account: AwsAccount, storage: S3Storage, registry: ModelRegistry,
                 autoscaling: EndpointAutoscaling, functions: LambdaFunctions, bucket_name: Callable[[], str],
                 roles: PipelineRoles):
        self.account, self.storage, self.registry = account, storage, registry
        self.autoscaling, self.functions = autoscaling, functions
        self.bucket_name, self.roles = bucket_name, roles
        self.checks = AccountChecks(account, roles, bucket_name)

    def caller_policies(self, config: PipelineConfig) -> dict[str, dict]:
        """The caller's least-privilege policy as managed policies by name (AccountChecks.caller_policies)."""
        return self.checks.caller_policies(config)

    def policy_arn(self, name: str) -> str:
        """The ARN a managed policy called `name` has in this account."""
        return self.checks.policy_arn(name)

    def plan(self, config: PipelineConfig, release: ModelVersion | None = None) -> Plan:
        prices = load_prices(config.preflight.prices_file)  # a bad file is the user's to fix: raised
        account, names, region = self.account, config.names, self.account.region
        training = release is None
        checks: list[Check] = []
        bucket = self.bucket_name()
        bucket_exists = self._bucket(bucket, checks)
        changes = [change("S3 bucket", f"s3://{bucket}", bucket_exists,
                          detail="" if bucket_exists else "public access blocked, SSE-S3")]
        if training:
            dataset = plan_dataset(config, self.storage, bucket, bucket_exists)
            changes.append(dataset.change)
            checks.append(dataset.check)
            weights, weight_changes = plan_weights(config, self.storage, bucket, self.storage.exists, checks)
            changes += weight_changes
        keys = attempted(checks, "bucket encryption keys",
                         lambda: self.roles.key_arns([f"s3://{bucket}/", *self.roles.readable_uris]), [])
        role_arns: dict[str, str] = {}
        changes += attempted(checks, "IAM roles", lambda: self._roles(config, bucket, role_arns, training), [])

        followed = None
        if training:
            followed = attempted(checks, "tuning jobs", lambda: self._followed_tuning_job(
                config, bucket, dataset.uri, dataset.checksum, weights), None)
            changes.append(self._training_change(config, followed))
            best = attempted(checks, "best training job", lambda: self._best_trial(config, followed), None)
            label, artifact, registry_changes = attempted(checks, "model registry",
                                                          lambda: self._registry(config, best), (None, None, []))
            changes += registry_changes
        else:
            label, artifact = release.label, release.model_artifact
            changes.append(released_version_change(release))

        served = attempted(checks, "endpoint", lambda: self._served(names.endpoint), None)
        image = self._image(config, checks)
        role = role_arns.get("sagemaker") or policies.role_arn(account.account_id, names.role("sagemaker"))
        wanted = WantedModel(label, artifact, image, role,
                             config.hosting.instance_type, config.hosting.variant_name,
                             served.instance_count if served else config.hosting.initial_instance_count,
                             config.hosting.model_environment())
        hosting = endpoint_changes(names.endpoint, served, wanted)
        changes += hosting
        changes += attempted(checks, "rollback alarms", lambda: self._alarms(config), [])
        changes += attempted(checks, "autoscaling", lambda: self._autoscaling(config), [])
        changes += attempted(checks, "Lambda function", lambda: self._function(config, bucket, label, role_arns), [])

        checks.append(endpoint_update_check(names.endpoint, served, hosting))
        ec2_training = training and config.training.mode == "instance"
        for name, run_checks in (
                ("function concurrency", lambda: [concurrency_check(self.functions, config)]),
                ("EC2 instance", lambda: self.checks.ec2_checks(config) if ec2_training else []),
                ("SageMaker quotas", lambda: self.checks.quota_checks(config, served, hosting, training)),
                ("caller permissions", lambda: [self.checks.permissions(config, bucket, keys, training)])):
            checks += attempted(checks, name, run_checks, [])

        costs = estimate(config, prices, region, expected_hours_per_job=config.preflight.expected_training_hours,
                         request_duration_ms=config.preflight.request_duration_ms)
        if not training:
            costs = without_training(costs, f"serves {label} again: nothing is trained")
        elif followed is not None:
            costs = without_training(costs, f"follows tuning job {followed[0]} ({followed[1]}) of the same "
                                            "configuration: nothing new is trained")
        return Plan("aws", region, changes, costs, checks, prices.currency, prices.as_of, prices.source)

    def _image(self, config: PipelineConfig, checks: list[Check]) -> str:
        """The inference image the model will run in (and, for tuning, that a training image exists)."""
        region, training, hosting = self.account.region, config.training, config.hosting
        try:
            if training.mode == "tuning":
                training_image_uri(region, training.instance_type)
            return inference_image_uri(region, hosting.instance_type)
        except ValueError as exc:  # the SDK knows no PyTorch image for that type or region
            checks.append(Check("container images", "fail", f"no SageMaker PyTorch image for "
                                f"{training.instance_type} / {hosting.instance_type} in {region}: {exc}"))
            return ""

    # -- storage ----------------------------------------------------------------------------------
    def _bucket(self, bucket: str, checks: list[Check]) -> bool:
        """Whether the bucket exists and these credentials may use it (a fail check when it is another's)."""
        try:
            self.storage.client.head_bucket(Bucket=bucket)
            return True
        except ClientError as exc:
            if http_status(exc) == 403 or error_code(exc) in ("403", "Forbidden", "AccessDenied"):
                checks.append(Check("S3 bucket", "fail", f"S3 bucket {bucket!r} exists but these credentials cannot "
                                    "use it (bucket names are global; it may belong to another account): set "
                                    "aws.bucket to a bucket of yours"))
                return False
            if is_not_found(exc):
                return False
            raise

    # -- roles --------------------------------------------------------------------------------------
    def _documents(self, config: PipelineConfig, bucket: str, training: bool = True) -> dict[str, dict]:
        """The roles' inline policies as PipelineRoles makes them (from the bucket's name: nothing is made);
        without the training instance's role when the run trains nothing."""
        names = config.names
        documents = {"sagemaker": self.roles.sagemaker_document(bucket),
                     "lambda": self.roles.lambda_document(bucket, names.function, names.endpoint,
                                                          readable_s3_prefixes(names.prefix_uri(bucket), config.function))}
        if training and config.training.mode == "instance":
            documents["ec2"] = self.roles.ec2_document(bucket)
        return documents

    def _roles(self, config: PipelineConfig, bucket: str, arns: dict[str, str],
               training: bool = True) -> list[PlannedChange]:
        iam, names = self.account.client("iam"), config.names
        changes = []
        for kind, document in self._documents(config, bucket, training).items():
            name, service = names.role(kind), policies.SERVICE_FOR_ROLE[kind]
            found = or_none(iam.get_role, RoleName=name)
            if found is None:
                changes.append(PlannedChange("IAM role", name, "create",
                                             f"trusted by {service}, inline policy {POLICY_NAMES[kind]}"))
                continue
            role = found["Role"]
            arns[kind] = role["Arn"]
            changed = []
            if canonical_policy(role["AssumeRolePolicyDocument"]) != canonical_policy(policies.assume_role_policy(service)):
                changed.append("its trust policy")
            current = or_none(iam.get_role_policy, RoleName=name, PolicyName=POLICY_NAMES[kind])
            if current is None or canonical_policy(current["PolicyDocument"]) != canonical_policy(document):
                changed.append(f"inline policy {POLICY_NAMES[kind]}")
            tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=name)["Tags"]}
            if any(tags.get(k) != v for k, v in {**names.tags, MANAGED_TAG: "true"}.items()):
                changed.append("its tags")
            changes.append(change("IAM role", name, True, changed))
        if training and config.training.mode == "instance":
            profile = or_none(iam.get_instance_profile, InstanceProfileName=names.role("ec2"))
            held = [r["RoleName"] for r in (profile or {}).get("InstanceProfile", {}).get("Roles", [])]
            changes.append(change("instance profile", names.role("ec2"), profile is not None,
                                  [] if held == [names.role("ec2")] else ["its role"]))
        return changes

    # -- training -------------------------------------------------------------------------------------
    def _tuning(self) -> SageMakerTuning:
        account = self.account
        return SageMakerTuning(account.session, account.client("sagemaker"), account.client("s3"))

    def _followed_tuning_job(self, config: PipelineConfig, bucket: str, dataset_uri: str | None, checksum: str,
                             weights: str | None) -> tuple[str, str] | None:
        """The stage's tuning job of the same configuration digest that tune_hyperparameters would follow
        (its name and status), or None: a new one is started."""
        if config.training.mode != "tuning" or dataset_uri is None:
            return None
        names = config.names
        # The request tasks/tune_hyperparameters.py sends (the job name is not part of the digest).
        request = tuning_request(config, "", dataset_uri, names.jobs_uri(bucket), weights, checksum)
        wanted_tags = {**names.tags, PipelineNames.DIGEST_TAG: tuning_digest(request, source_digest(str(TRAINING_DIR)))}
        runner = self._tuning()
        name = runner.same_configuration(names.tuning_job_prefix, wanted_tags)
        if name is None:
            return None
        described = runner.describe(name) or {}
        return name, described.get("HyperParameterTuningJobStatus", "InProgress")

    @staticmethod
    def _training_change(config: PipelineConfig, followed: tuple[str, str] | None) -> PlannedChange:
        training, names = config.training, config.names
        if training.mode == "instance":
            return PlannedChange("training job", f"{names.training_job_prefix}-<run>", "create",
                                 f"one EC2 {training.ec2_instance_type} instance, at most "
                                 f"{training.max_runtime_seconds / 3600:g} h")
        tuning = training.tuning
        trials = (grid_size(tuning.parameter_ranges.to_sagemaker()) if tuning.strategy == "Grid"
                  else tuning.max_jobs)
        return tuning_job_change(names.tuning_job_prefix, followed, trials, tuning.max_parallel_jobs,
                                 training.instance_type)

    def _best_trial(self, config: PipelineConfig, followed: tuple[str, str] | None) -> TrialSummary | None:
        """The trial select_best_model will pick from a completed tuning job, with its model artifact."""
        if followed is None or followed[1] != "Completed":
            return None
        name, objective = followed[0], config.training.tuning.objective
        runner = self._tuning()
        summaries = runner.list_trials(name)
        trials = [trial_from_summary(s, trial_index(s["TrainingJobName"], name, i), objective.metric)
                  for i, s in enumerate(summaries)]
        try:
            best = choose_best_trial(trials, objective.type)
        except NoSuccessfulTrialError:
            return None
        description = or_none(self.account.client("sagemaker").describe_training_job, TrainingJobName=best.job_name)
        summary = next(s for s in summaries if s["TrainingJobName"] == best.job_name)
        return trial_from_summary(summary, best.index, objective.metric, description)

    # -- registry -------------------------------------------------------------------------------------
    def _registry(self, config: PipelineConfig,
                  best: TrialSummary | None) -> tuple[str | None, str | None, list[PlannedChange]]:
        """(label, artifact) of the version the run registers and serves, and the registry's changes."""
        group = config.names.model_group
        exists = or_none(self.account.client("sagemaker").describe_model_package_group,
                         ModelPackageGroupName=group) is not None
        versions = self.registry.list_model_versions(group) if exists else []
        changes = [change("model package group", group, exists)]
        registered = next((v for v in versions if best is not None and v.job_name == best.job_name), None)
        if registered is not None:
            action = "keep" if registered.champion else "update"
            detail = (f"registered from {registered.job_name}; " +
                      ("the champion" if registered.champion else "approved after its smoke test"))
            changes.append(PlannedChange("model version", registered.label, action, detail))
            return registered.label, registered.model_artifact, changes
        label = f"{group}/{max((v.version for v in versions), default=0) + 1}"
        source = best.job_name if best is not None else "the best training job"
        changes.append(PlannedChange("model version", label, "create",
                                     f"from {source}; approved after its smoke test"))
        return label, best.model_artifact if best is not None else None, changes

    # -- hosting --------------------------------------------------------------------------------------
    def _served(self, endpoint: str) -> ServedModel | None:
        sm = self.account.client("sagemaker")
        described = or_none(sm.describe_endpoint, EndpointName=endpoint)
        if described is None:
            return None
        config_name = described.get("EndpointConfigName", "")
        config = (or_none(sm.describe_endpoint_config, EndpointConfigName=config_name) if config_name else None) or {}
        variant = (config.get("ProductionVariants") or [{}])[0]
        model_name = variant.get("ModelName", "")
        model = (or_none(sm.describe_model, ModelName=model_name) if model_name else None) or {}
        container = model.get("PrimaryContainer") or {}
        environment = dict(container.get("Environment") or {})
        live = next((v for v in described.get("ProductionVariants") or []
                     if v.get("VariantName") == variant.get("VariantName")), {})
        count = live.get("CurrentInstanceCount",
                         live.get("DesiredInstanceCount", variant.get("InitialInstanceCount", 0)))
        return ServedModel(described["EndpointStatus"], config_name, variant.get("VariantName", ""),
                           variant.get("InstanceType", ""), int(count or 0), model_name,
                           container.get("ModelDataUrl", ""), environment.get("MODEL_VERSION", ""),
                           container.get("Image", ""), model.get("ExecutionRoleArn", ""), environment)

    def _alarms(self, config: PipelineConfig) -> list[PlannedChange]:
        cloudwatch = self.account.client("cloudwatch")
        changes = []
        for document in rollback_alarms(config.names.endpoint, config.hosting.variant_name,
                                        config.hosting.traffic_shift):
            name = document["AlarmName"]
            found = cloudwatch.describe_alarms(AlarmNames=[name]).get("MetricAlarms") or []
            desired = {k: v for k, v in document.items() if k != "AlarmName"}
            changes.append(change("CloudWatch alarm", name, bool(found),
                                  differences(found[0], desired) if found else [],
                                  detail="" if found else f"{document['MetricName']} > {document['Threshold']:,.0f}: "
                                                          "an update rolls back on it"))
        return changes

    def _autoscaling(self, config: PipelineConfig) -> list[PlannedChange]:
        endpoint, variant, scaling = config.names.endpoint, config.hosting.variant_name, config.autoscaling
        state = self.autoscaling.describe(endpoint, variant)
        rid = resource_id(endpoint, variant)
        if not scaling.enabled:
            return [] if state is None else [
                PlannedChange("scalable target", rid, "delete", "autoscaling.enabled is off"),
                PlannedChange("scaling policy", policy_name(endpoint), "delete")]
        target = scalable_target(endpoint, variant, scaling)
        policy = target_tracking_policy(endpoint, variant, scaling)
        observed = {} if state is None else {"MinCapacity": state.min_capacity, "MaxCapacity": state.max_capacity}
        return [
            change("scalable target", rid, state is not None,
                   differences(observed, {k: target[k] for k in ("MinCapacity", "MaxCapacity")}),
                   detail=f"{scaling.min_capacity}..{scaling.max_capacity} instances"),
            change("scaling policy", policy_name(endpoint), bool(state and state.policy),
                   differences(state.policy, policy) if state and state.policy else [],
                   detail=f"target {scaling.target_invocations_per_instance:g} invocations per instance a minute"),
        ]

    def _function(self, config: PipelineConfig, bucket: str, label: str | None,
                  role_arns: dict[str, str]) -> list[PlannedChange]:
        lam, names, function = self.account.client("lambda"), config.names, config.function
        name = names.function
        prefixes = readable_s3_prefixes(names.prefix_uri(bucket), function)
        desired = {"Role": role_arns.get("lambda") or policies.role_arn(self.account.account_id, names.role("lambda")),
                   "Handler": HANDLER, "Runtime": RUNTIME, "MemorySize": function.memory_mb,
                   "Timeout": function.timeout_seconds,
                   "Environment": function_environment(names.endpoint, function, label or "", prefixes)}
        sha = code_sha256(zip_source(str(LAMBDA_SOURCE_DIR)))

        def changed(configuration: dict) -> list[str]:
            observed = {**configuration, "Environment": (configuration.get("Environment") or {}).get("Variables") or {}}
            return (["code"] if configuration.get("CodeSha256") != sha else []) + differences(
                observed, desired, exact=("Environment",))

        configuration = or_none(lam.get_function_configuration, FunctionName=name)
        changes = [change("Lambda function", name, configuration is not None,
                          changed(configuration) if configuration else [],
                          detail="" if configuration else f"{function.memory_mb} MB, {function.timeout_seconds} s")]
        version = None
        if configuration is not None:
            for page in lam.get_paginator("list_versions_by_function").paginate(FunctionName=name):
                for published in page.get("Versions", []):
                    if published.get("Version", "").isdigit() and not changed(published) and (
                            version is None or int(published["Version"]) > int(version)):
                        version = published["Version"]
        changes.append(PlannedChange("function version", f"{name}:{version}", "keep",
                                     "published with this code and configuration") if version else
                       PlannedChange("function version", f"{name}:<next>", "create", f"for {label or 'the new model'}"))
        alias = or_none(lam.get_alias, FunctionName=name, Name=ALIAS) if configuration else None
        if alias is None:
            changes.append(PlannedChange("function alias", f"{name}:{ALIAS}", "create"))
        elif alias["FunctionVersion"] == version:
            changes.append(PlannedChange("function alias", f"{name}:{ALIAS}", "keep", f"-> {version}"))
        else:
            changes.append(PlannedChange("function alias", f"{name}:{ALIAS}", "update",
                                         f"{alias['FunctionVersion']} -> {version or 'the new version'}"))
        reserved = (lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
                    if configuration else None)
        provisioned = ((or_none(lam.get_provisioned_concurrency_config, FunctionName=name, Qualifier=ALIAS) or {})
                       .get("RequestedProvisionedConcurrentExecutions") if alias else None)
        changes += [c for c in (
            setting_change("reserved concurrency", name, reserved, function.reserved_concurrency),
            setting_change("provisioned concurrency", f"{name}:{ALIAS}", provisioned,
                           function.provisioned_concurrency or None)) if c is not None]
        return changes
