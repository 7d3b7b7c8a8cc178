"""The plan's decisions (what exists vs what the run wants), its quota and permission checks, the
caller's least-privilege policy, and how a plan is shown: plain functions, no AWS."""
import json

import pytest

from core import caller_policy
from core import iam
from core.costs import CostLine
from core.names import PipelineNames
from core.plan import (
    Check, Plan, PlannedChange, PreflightFailedError, ServedModel, WantedModel, change, change_lines, denied_pairs,
    differences, ec2_vcpu_quota, endpoint_changes, endpoint_update_check, instance_quota_check, markdown,
    permissions_check, setting_change, tuning_job_change, vcpu_quota_check, without_training,
)

NAMES = PipelineNames("dog-breeds", "dev")
ACCOUNT, REGION, BUCKET = "123456789012", "us-east-1", "my-bucket"
ARTIFACT = "s3://my-bucket/dog-breeds/dev/jobs/dev-tune-1-002-abc/output/model.tar.gz"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/dog-breeds-dev-sagemaker"


def served(**overrides) -> ServedModel:
    values = dict(status="InService", config_name="dog-breeds-dev-endpoint-cfg-1234abcd", variant_name="AllTraffic",
                  instance_type="ml.m5.large", instance_count=2, model_name="dog-breeds-dev-endpoint-v1-aaaabbbb",
                  model_artifact=ARTIFACT, model_label="dog-breeds-dev-models/1", image=IMAGE, role_arn=ROLE,
                  environment={"TOP_K": "3", "MODEL_VERSION": "dog-breeds-dev-models/1"})
    return ServedModel(**{**values, **overrides})


def wanted(**overrides) -> WantedModel:
    values = dict(label="dog-breeds-dev-models/1", artifact=ARTIFACT, image=IMAGE, role_arn=ROLE,
                  instance_type="ml.m5.large", variant_name="AllTraffic", instance_count=2, environment={"TOP_K": "3"})
    return WantedModel(**{**values, **overrides})


def actions(changes):
    return {c.kind: c.action for c in changes}


# -- decisions ---------------------------------------------------------------------------------

def test_change_creates_updates_naming_what_differs_or_keeps():
    assert change("IAM role", "r", exists=False).action == "create"
    updated = change("IAM role", "r", exists=True, changed=["inline policy p", "its tags"])
    assert updated.action == "update" and updated.detail == "changes inline policy p, its tags"
    assert change("IAM role", "r", exists=True).action == "keep"


def test_differences_ignore_what_aws_adds_but_not_what_changed():
    desired = {"TargetTrackingScalingPolicyConfiguration": {"TargetValue": 10.0, "ScaleInCooldown": 100},
               "Dimensions": [{"Name": "EndpointName", "Value": "e"}, {"Name": "VariantName", "Value": "v"}]}
    observed = {"TargetTrackingScalingPolicyConfiguration": {"TargetValue": 10.0, "ScaleInCooldown": 100,
                                                             "DisableScaleIn": False},
                "Dimensions": [{"Name": "VariantName", "Value": "v"}, {"Name": "EndpointName", "Value": "e"}],
                "PolicyARN": "arn:..."}
    assert differences(observed, desired) == []
    observed["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] = 20.0
    assert differences(observed, desired) == ["TargetTrackingScalingPolicyConfiguration"]
    # An extra environment variable is a change when the mapping is compared as it is.
    assert differences({"Environment": {"A": "1", "B": "2"}}, {"Environment": {"A": "1"}}) == []
    assert differences({"Environment": {"A": "1", "B": "2"}}, {"Environment": {"A": "1"}},
                       exact=("Environment",)) == ["Environment"]
    assert differences({}, {"MemorySize": 512}) == ["MemorySize"]


def test_tuning_job_is_followed_when_one_of_the_same_configuration_exists():
    new = tuning_job_change("dev-tune", None, 4, 2, "ml.m5.xlarge")
    assert (new.action, new.name) == ("create", "dev-tune-<run>") and "4 training jobs, 2 at a time" in new.detail
    reused = tuning_job_change("dev-tune", ("dev-tune-260101-1", "Completed"), 4, 2, "ml.m5.xlarge")
    assert (reused.action, reused.name) == ("keep", "dev-tune-260101-1") and "reused" in reused.detail
    assert "attached" in tuning_job_change("dev-tune", ("dev-tune-2", "InProgress"), 4, 2, "x").detail


def test_settings_that_exist_or_not():
    assert setting_change("reserved concurrency", "f", None, None) is None
    assert setting_change("reserved concurrency", "f", None, 100).action == "create"
    assert setting_change("reserved concurrency", "f", 100, None).action == "delete"
    assert (setting_change("reserved concurrency", "f", 10, 100).action,
            setting_change("reserved concurrency", "f", 10, 100).detail) == ("update", "10 -> 100")
    assert setting_change("reserved concurrency", "f", 100, 100).action == "keep"


def test_an_endpoint_that_does_not_exist_is_created_with_its_model_and_config():
    changes = endpoint_changes("dog-breeds-dev-endpoint", None, wanted(label="dog-breeds-dev-models/1", artifact=None))
    assert actions(changes) == {"model": "create", "endpoint config": "create", "endpoint": "create"}
    assert changes[0].name == "dog-breeds-dev-endpoint-v1-<hash>"
    assert endpoint_update_check("dog-breeds-dev-endpoint", None, changes).status == "pass"


def test_an_endpoint_serving_the_same_model_is_kept():
    changes = endpoint_changes("dog-breeds-dev-endpoint", served(), wanted())
    assert actions(changes) == {"model": "keep", "endpoint config": "keep", "endpoint": "keep"}
    assert changes[0].name == "dog-breeds-dev-endpoint-v1-aaaabbbb"
    assert endpoint_update_check("dog-breeds-dev-endpoint", served(), changes).status == "pass"


@pytest.mark.parametrize("wants, model, config", [
    (dict(label="dog-breeds-dev-models/2", artifact=ARTIFACT.replace("002", "003")), "create", "create"),
    (dict(label="dog-breeds-dev-models/2", artifact=None), "create", "create"),  # not trained yet
    (dict(environment={"TOP_K": "5"}), "create", "create"),
    (dict(instance_type="ml.c5.xlarge"), "keep", "create"),
])
def test_a_changed_model_or_instance_type_updates_the_endpoint_blue_green(wants, model, config):
    changes = endpoint_changes("dog-breeds-dev-endpoint", served(), wanted(**wants))
    assert actions(changes) == {"model": model, "endpoint config": config, "endpoint": "update"}
    update = changes[-1].detail
    assert update.startswith("blue/green: model dog-breeds-dev-models/1 -> ") and "2 new instance(s)" in update
    check = endpoint_update_check("dog-breeds-dev-endpoint", served(), changes)
    assert check.status == "warn" and "serves dog-breeds-dev-models/1 now and will be updated" in check.message


def test_a_failed_endpoint_is_created_again():
    changes = endpoint_changes("e", served(status="Failed"), wanted())
    assert changes[-1].action == "update" and "deleted and created again" in changes[-1].detail


# -- quotas ------------------------------------------------------------------------------------------

def test_instance_quota_passes_fails_with_what_to_change_or_says_not_offered():
    quota = {"QuotaName": "ml.m5.large for endpoint usage", "QuotaCode": "L-AB12", "Value": 4.0}
    assert instance_quota_check("endpoint instances", "ml.m5.large", "endpoint", 4, quota, REGION,
                                "hosting.instance_type", "autoscaling.max_capacity").status == "pass"
    over = instance_quota_check("endpoint instances", "ml.m5.large", "endpoint", 100, quota, REGION,
                                "hosting.instance_type", "autoscaling.max_capacity")
    assert over.status == "fail"
    assert over.message == ('100 x ml.m5.large needed at once, but the quota "ml.m5.large for endpoint usage" (L-AB12) '
                            'is 4 in us-east-1: request an increase to 100 in Service Quotas, or lower '
                            'autoscaling.max_capacity')
    missing = instance_quota_check("training instances", "ml.p5.48xlarge", "training job", 2, None, "eu-south-2",
                                   "training.instance_type", "training.tuning.max_parallel_jobs")
    assert missing.status == "fail" and missing.message.startswith(
        "ml.p5.48xlarge is not offered for training job use in eu-south-2") and "choose another training.instance_type" in missing.message


@pytest.mark.parametrize("instance_type, code", [
    ("m5.xlarge", "L-1216C47A"), ("c5.2xlarge", "L-1216C47A"), ("t3.medium", "L-1216C47A"),
    ("g4dn.xlarge", "L-DB2E81BA"), ("p3.2xlarge", "L-417A185B"), ("inf2.xlarge", "L-1945791B"),
    ("trn1.2xlarge", "L-2C3B7624"), ("dl1.24xlarge", "L-6E869C2A"), ("x2iedn.xlarge", "L-7295265B"),
])
def test_ec2_types_count_against_their_familys_vcpu_quota(instance_type, code):
    assert ec2_vcpu_quota(instance_type)[0] == code


def test_vcpu_quota_check():
    assert vcpu_quota_check("m5.xlarge", 4, 32.0, REGION).status == "pass"
    fail = vcpu_quota_check("g5.xlarge", 4, 0.0, REGION)
    assert fail.status == "fail" and "L-DB2E81BA" in fail.message and "request an increase to at least 4" in fail.message
    assert vcpu_quota_check("m5.xlarge", 4, None, REGION).status == "warn"


# -- permissions ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("caller, principal", [
    ("arn:aws:sts::123456789012:assumed-role/Deployer/ci-run-17", "arn:aws:iam::123456789012:role/Deployer"),
    ("arn:aws-cn:sts::123456789012:assumed-role/Deployer/s", "arn:aws-cn:iam::123456789012:role/Deployer"),
    ("arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123456789012:user/alice"),
    ("arn:aws:iam::123456789012:user/team/alice", "arn:aws:iam::123456789012:user/team/alice"),
    ("arn:aws:iam::123456789012:root", None),
    ("arn:aws:sts::123456789012:federated-user/bob", None),
])
def test_the_simulated_principal_of_a_caller(caller, principal):
    assert caller_policy.caller_principal_arn(caller) == principal


def test_denied_pairs_from_simulation_results():
    results = [
        {"EvalActionName": "s3:GetObject", "EvalResourceName": "arn:aws:s3:::b/p/*", "EvalDecision": "allowed"},
        {"EvalActionName": "iam:PassRole", "EvalResourceName": "arn:aws:iam::1:role/r", "EvalDecision": "implicitDeny"},
        {"EvalActionName": "sagemaker:CreateEndpoint", "EvalDecision": "implicitDeny", "ResourceSpecificResults": [
            {"EvalResourceName": "arn:e", "EvalResourceDecision": "allowed"},
            {"EvalResourceName": "arn:cfg-*", "EvalResourceDecision": "explicitDeny"}]},
    ]
    denied = denied_pairs(results)
    assert denied == [("iam:PassRole", "arn:aws:iam::1:role/r", "implicitDeny"),
                      ("sagemaker:CreateEndpoint", "arn:cfg-*", "explicitDeny")]
    check = permissions_check("arn:aws:iam::1:user/a", denied, 40)
    assert check.status == "fail" and "iam:PassRole on arn:aws:iam::1:role/r (implicitDeny)" in check.message
    assert "sagemaker-flows plan --caller-policy" in check.message
    assert permissions_check("arn:aws:iam::1:user/a", [], 40).status == "pass"


# -- the caller's policy ---------------------------------------------------------------------------------

def _policy(**options) -> dict:
    """The caller's managed policies as one document (their statements together)."""
    documents = caller_policy.caller_policies(NAMES, ACCOUNT, REGION, BUCKET, caller_arn=f"arn:aws:iam::{ACCOUNT}:user/ci",
                                    **options)
    return {"Version": "2012-10-17", "Statement": [s for d in documents.values() for s in d["Statement"]]}


def _grants(document):
    listify = lambda v: [v] if isinstance(v, str) else list(v)  # noqa: E731
    return {(a, r) for s in document["Statement"] for a in listify(s["Action"]) for r in listify(s["Resource"])}


@pytest.mark.parametrize("mode", ["tuning", "instance"])
def test_caller_policy_is_valid_and_wildcards_only_where_aws_has_no_resource(mode):
    document = json.loads(json.dumps(_policy(mode=mode, readable_uris=["s3://data-bucket/dogImages/"],
                                             key_arns=[f"arn:aws:kms:{REGION}:{ACCOUNT}:key/abcd"])))
    sids = [s["Sid"] for s in document["Statement"]]
    assert len(sids) == len(set(sids)) and all(sid.isalnum() for sid in sids)
    assert set(iam.wildcard_resources(document)) <= caller_policy.CALLER_WILDCARD_SIDS
    for statement in document["Statement"]:
        if statement["Sid"] in caller_policy.CALLER_WILDCARD_SIDS:  # only list, describe and account-wide reads there
            assert all(a.split(":")[1].startswith(("List", "Describe", "Get", "Register", "Put", "Delete", "Deregister"))
                       for a in statement["Action"])
            assert not any(a.startswith(("iam:", "s3:", "sagemaker:Create")) for a in statement["Action"])


def test_caller_policy_grants_what_the_run_does_on_the_pipelines_resources():
    grants = _grants(_policy(readable_uris=["s3://data-bucket/dogImages/"]))
    sm = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
    assert ("s3:PutObject", "arn:aws:s3:::my-bucket/dog-breeds/dev/*") in grants
    assert ("s3:GetObject", "arn:aws:s3:::data-bucket/dogImages/*") in grants
    assert ("sagemaker:CreateHyperParameterTuningJob", f"{sm}:hyper-parameter-tuning-job/dev-tune-*") in grants
    assert ("sagemaker:ListHyperParameterTuningJobs", "*") in grants and ("sagemaker:ListTags", f"{sm}:hyper-parameter-tuning-job/dev-tune-*") in grants
    assert ("sagemaker:UpdateEndpoint", f"{sm}:endpoint/dog-breeds-dev-endpoint") in grants
    assert ("lambda:GetAccountSettings", "*") in grants and ("servicequotas:ListServiceQuotas", "*") in grants
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/abcd"
    assert ("kms:DescribeKey", key) in _grants(_policy(key_arns=[key]))
    assert ("cloudwatch:PutMetricAlarm", f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:dog-breeds-dev-endpoint-5xx-errors") in grants
    assert ("iam:SimulatePrincipalPolicy", f"arn:aws:iam::{ACCOUNT}:user/ci") in grants
    assert ("lambda:InvokeFunction", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:dog-breeds-dev-predict:live") in grants
    assert not any(a.startswith("ec2:") for a, _ in grants)  # tuning mode launches no instance


def test_roles_are_passed_only_to_their_own_service():
    document = _policy(mode="instance")
    passes = {s["Resource"]: next(iter(s["Condition"].values()))["iam:PassedToService"]
              for s in document["Statement"] if s["Action"] == ["iam:PassRole"]}
    assert passes == {f"arn:aws:iam::{ACCOUNT}:role/dog-breeds-dev-sagemaker": "sagemaker.amazonaws.com",
                      f"arn:aws:iam::{ACCOUNT}:role/dog-breeds-dev-lambda": "lambda.amazonaws.com",
                      f"arn:aws:iam::{ACCOUNT}:role/dog-breeds-dev-ec2": "ec2.amazonaws.com"}
    terminate = next(s for s in document["Statement"] if s["Sid"] == "TerminatePipelineInstances")
    assert terminate["Condition"]["StringEquals"] == {"aws:ResourceTag/sagemaker-flows:project": "dog-breeds",
                                                      "aws:ResourceTag/sagemaker-flows:stage": "dev"}


def test_every_condition_key_has_a_value_for_the_simulation():
    for action in caller_policy.caller_actions(NAMES, ACCOUNT, REGION, BUCKET, mode="instance",
                                     readable_uris=["s3://data-bucket/dogImages/"],
                                     key_arns=[f"arn:aws:kms:{REGION}:{ACCOUNT}:key/abcd"]):
        keys = {key for operator in (action.condition or {}).values() for key in operator}
        assert keys == {key for key, _ in action.context}, action.sid


# -- showing a plan ----------------------------------------------------------------------------------------

PLAN = Plan("aws", REGION,
            [PlannedChange("IAM role", "dog-breeds-dev-sagemaker", "create", "trusted by sagemaker.amazonaws.com"),
             PlannedChange("endpoint", "dog-breeds-dev-endpoint", "update", "blue/green | model 1 -> 2"),
             PlannedChange("function", "dog-breeds-dev-predict", "keep"),
             PlannedChange("scalable target", "endpoint/x/variant/AllTraffic", "delete")],
            [CostLine("endpoint at min capacity", "1 x ml.m5.large", 83.95, "month"),
             CostLine("function provisioned concurrency", "5 x 512 MB", None, "month")],
            [Check("function concurrency", "pass", "fits"), Check("caller permissions", "fail", "may not: x")],
            prices_as_of="2025-01")


def test_terraform_like_lines_and_counts():
    lines = change_lines(PLAN)
    assert lines[0].startswith("  + create  IAM role ") and lines[0].endswith("(trusted by sagemaker.amazonaws.com)")
    assert lines[1].startswith("  ~ update  endpoint ") and lines[2].startswith("  = keep    function ")
    assert lines[3].startswith("  - delete  scalable target ")
    assert lines[-1] == "Plan: 1 to create, 1 to update, 1 to keep, 1 to delete."


def test_markdown_and_json_say_unknown_where_a_price_is_unknown():
    documents = markdown(PLAN)
    assert "blue/green \\| model 1 -> 2" in documents["changes"]  # a | in a cell does not break the table
    assert "| function provisioned concurrency | unknown | month |" in documents["costs"]
    assert "A month at minimum capacity: unknown" in documents["costs"]
    data = json.loads(json.dumps(PLAN.to_dict()))
    assert data["counts"] == {"create": 1, "update": 1, "keep": 1, "delete": 1}
    assert [c["shown"] for c in data["costs"]] == ["$83.95", "unknown"]
    assert data["monthly_at_min_capacity"] is None and data["failed"] == 1


def test_a_run_that_trains_nothing_new_costs_no_training():
    lines = [CostLine("training (expected)", "4 jobs", 0.92, "once"), CostLine("training (at most)", "4 jobs", 22.08, "once"),
             CostLine("endpoint at min capacity", "1", 83.95, "month")]
    kept = without_training(lines, "follows tuning job dev-tune-1")
    assert [(c.item, c.amount) for c in kept] == [("training", 0.0), ("endpoint at min capacity", 83.95)]


def test_preflight_error_lists_every_failed_check_and_is_permanent():
    from core.retry import PermanentError, is_transient

    error = PreflightFailedError(PLAN.failed)
    assert isinstance(error, PermanentError) and not is_transient(error)
    assert "- caller permissions: may not: x" in str(error) and "preflight.enforce=false" in str(error)
