"""A run's plan: what it will create, update, keep or delete, what that costs, and the pre-flight checks
that refuse a run which would fail half-way. The backends observe what exists (backends/*/planning.py);
the decisions that compare it with what the run wants are here, as plain functions."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from core.costs import CostLine, monthly_total
from core.retry import PermanentError

Action = Literal["create", "update", "keep", "delete"]
Status = Literal["pass", "warn", "fail"]
SYMBOLS = {"create": "+", "update": "~", "keep": "=", "delete": "-"}
# Endpoint statuses (DescribeEndpoint) in which deploy_endpoint deletes the endpoint and creates it again.
RECREATED_STATUSES = ("Failed", "OutOfService")


@dataclass(frozen=True)
class PlannedChange:
    kind: str  # "role", "endpoint", "tuning job", ...
    name: str
    action: Action
    detail: str = ""


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str  # what was found, and for a warn or fail what to change


@dataclass(frozen=True)
class Plan:
    backend: str
    region: str
    changes: list[PlannedChange]
    costs: list[CostLine]
    checks: list[Check]
    currency: str = "USD"
    prices_as_of: str = ""
    prices_source: str = ""

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def counts(self) -> dict[str, int]:
        return {action: sum(c.action == action for c in self.changes) for action in SYMBOLS}

    def to_dict(self) -> dict:
        """The plan as plain JSON values (`sagemaker-flows plan --json`)."""
        return {
            "backend": self.backend, "region": self.region, "counts": self.counts(),
            "changes": [asdict(c) for c in self.changes],
            "costs": [{**asdict(c), "shown": c.shown} for c in self.costs],
            "monthly_at_min_capacity": monthly_total(self.costs), "currency": self.currency,
            "prices_as_of": self.prices_as_of, "prices_source": self.prices_source,
            "checks": [asdict(c) for c in self.checks], "failed": len(self.failed),
        }


class PreflightFailedError(PermanentError):
    """A pre-flight check failed and preflight.enforce is on: nothing was created or paid for."""

    def __init__(self, failed: Sequence[Check]):
        self.failed = list(failed)
        lines = [f"- {c.name}: {c.message}" for c in self.failed]
        super().__init__("pre-flight checks failed; nothing was created or paid for:\n" + "\n".join(lines)
                         + "\n(set preflight.enforce=false to run anyway, with these as warnings)")


# -- comparing what exists with what the run wants ---------------------------------------------

def _normal(value):
    """Lists of mappings in a stable order (AWS may list dimensions or tags in another order)."""
    if isinstance(value, Mapping):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_normal(v) for v in value]
        if all(isinstance(v, dict) for v in items):
            items.sort(key=lambda v: json.dumps(v, sort_keys=True, default=str))
        return items
    return value


def _covers(observed, desired) -> bool:
    if isinstance(desired, Mapping):
        return isinstance(observed, Mapping) and all(k in observed and _covers(observed[k], v)
                                                     for k, v in desired.items())
    return _normal(observed) == _normal(desired)


def differences(observed: Mapping, desired: Mapping, exact: Sequence[str] = ()) -> list[str]:
    """The keys of `desired` whose value `observed` lacks or holds otherwise. Nested mappings are
    compared on desired's keys only (AWS adds fields of its own to what it describes), except the keys
    named in `exact`, whose values must be equal as they are."""
    return [key for key, want in desired.items()
            if key not in observed or not (_normal(observed[key]) == _normal(want) if key in exact
                                           else _covers(observed[key], want))]


def change(kind: str, name: str, exists: bool, changed: Sequence[str] = (), detail: str = "") -> PlannedChange:
    """create when it does not exist, update (saying what changes) when something differs, else keep."""
    if not exists:
        return PlannedChange(kind, name, "create", detail)
    if changed:
        return PlannedChange(kind, name, "update", "; ".join(p for p in (f"changes {', '.join(changed)}", detail) if p))
    return PlannedChange(kind, name, "keep", detail)


def tuning_job_change(prefix: str, same_configuration: tuple[str, str] | None, trials: int, parallel: int,
                      instance_type: str) -> PlannedChange:
    """A tuning job: a new one, or the stage's job of the same configuration digest (name, status) that
    the run follows instead (a completed one is reused as it is, a running one attached to)."""
    if same_configuration is None:
        return PlannedChange("tuning job", f"{prefix}-<run>", "create",
                             f"{trials} training jobs, {parallel} at a time, on {instance_type}")
    name, status = same_configuration
    verb = "reused: it completed" if status == "Completed" else "attached to: it runs"
    return PlannedChange("tuning job", name, "keep", f"{verb} with the same configuration")


def setting_change(kind: str, name: str, have: int | None, want: int | None) -> PlannedChange | None:
    """A setting that exists or not (reserved or provisioned concurrency; None: not set): None when it is
    neither set nor wanted."""
    if have is None and want is None:
        return None
    if want is None:
        return PlannedChange(kind, name, "delete", f"{have} now")
    if have is None:
        return PlannedChange(kind, name, "create", str(want))
    if have != want:
        return PlannedChange(kind, name, "update", f"{have} -> {want}")
    return PlannedChange(kind, name, "keep", str(want))


def without_training(costs: Sequence[CostLine], why: str) -> list[CostLine]:
    """The cost lines of a run that trains nothing new (it follows a job of the same configuration)."""
    kept = [line for line in costs if not line.item.startswith("training")]
    return [CostLine("training", why, 0.0, "once"), *kept]


# -- the endpoint ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServedModel:
    """What an endpoint serves now, as DescribeEndpoint, its config and its model say."""

    status: str
    config_name: str
    variant_name: str
    instance_type: str
    instance_count: int
    model_name: str
    model_artifact: str
    model_label: str  # its MODEL_VERSION: <model group>/<version>
    image: str
    role_arn: str
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WantedModel:
    """What the run will serve. label and artifact are None when the model is not trained yet."""

    label: str | None
    artifact: str | None
    image: str
    role_arn: str
    instance_type: str
    variant_name: str
    instance_count: int
    environment: dict[str, str] = field(default_factory=dict)  # what deploy_endpoint sets besides MODEL_VERSION


def _same_model(served: ServedModel, wanted: WantedModel) -> bool:
    return (wanted.artifact is not None and served.model_artifact == wanted.artifact
            and served.model_label == wanted.label and served.image == wanted.image
            and served.role_arn == wanted.role_arn
            and all(served.environment.get(k) == v for k, v in wanted.environment.items()))


def endpoint_changes(endpoint: str, served: ServedModel | None, wanted: WantedModel) -> list[PlannedChange]:
    """The model, endpoint config and endpoint deploy_endpoint will make or keep: a model is kept when the
    endpoint already serves the same artifact as the same version with the same image, role and
    environment; its config when, besides, the instance type and variant are the same."""
    label = wanted.label or "the new model version"
    version = wanted.label.rsplit("/", 1)[-1] if wanted.label else "<N>"
    same_model = served is not None and _same_model(served, wanted)
    same_config = (same_model and served.instance_type == wanted.instance_type
                   and served.variant_name == wanted.variant_name)
    changes = [
        PlannedChange("model", served.model_name, "keep", f"serves {served.model_label}") if same_model else
        PlannedChange("model", f"{endpoint}-v{version}-<hash>", "create",
                      f"{label} from {wanted.artifact or 'the best training job'}"),
        PlannedChange("endpoint config", served.config_name, "keep", f"{served.variant_name} on {served.instance_type}")
        if same_config else
        PlannedChange("endpoint config", f"{endpoint}-cfg-<hash>", "create",
                      f"{wanted.variant_name} on {wanted.instance_type}"),
    ]
    if served is None:
        changes.append(PlannedChange("endpoint", endpoint, "create",
                                     f"{wanted.instance_count} x {wanted.instance_type}, serving {label}"))
    elif served.status in RECREATED_STATUSES:
        changes.append(PlannedChange("endpoint", endpoint, "update",
                                     f"it is {served.status}: deleted and created again, serving {label}"))
    elif same_config and served.status == "InService":
        changes.append(PlannedChange("endpoint", endpoint, "keep", f"serves {served.model_label}"))
    else:
        changes.append(PlannedChange("endpoint", endpoint, "update", endpoint_update(served, wanted)))
    return changes


def endpoint_update(served: ServedModel, wanted: WantedModel) -> str:
    """What a blue/green update of `served` to `wanted` changes, in words."""
    moves = [f"model {served.model_label or served.model_name} -> {wanted.label or 'the new model version'}"]
    if served.instance_type != wanted.instance_type:
        moves.append(f"instance type {served.instance_type} -> {wanted.instance_type}")
    if served.variant_name != wanted.variant_name:
        moves.append(f"variant {served.variant_name} -> {wanted.variant_name}")
    return (f"blue/green: {', '.join(moves)}; {served.instance_count} new instance(s) run beside the "
            f"{served.instance_count} serving until the shift ends")


def endpoint_update_check(endpoint: str, served: ServedModel | None, changes: Sequence[PlannedChange]) -> Check:
    """A warn when the run updates an endpoint that serves now (who calls it sees the new model)."""
    update = next((c for c in changes if c.kind == "endpoint" and c.action == "update"), None)
    if served is None or update is None:
        return Check("existing endpoint", "pass", f"{endpoint}: " + ("created by this run" if served is None
                                                                   else "kept as it is"))
    return Check("existing endpoint", "warn",
                 f"{endpoint} serves {served.model_label or served.model_name} now and will be updated "
                 f"({update.detail}); set a new stage to deploy beside it instead")


# -- quotas ---------------------------------------------------------------------------------------

def sagemaker_quota_name(instance_type: str, usage: Literal["training job", "endpoint"]) -> str:
    """The Service Quotas name of SageMaker's per-type instance quota, e.g. "ml.m5.large for endpoint usage"."""
    return f"{instance_type} for {usage} usage"


def instance_quota_check(name: str, instance_type: str, usage: str, need: int, quota: Mapping | None,
                         region: str, setting: str, lower: str) -> Check:
    """Whether `need` instances of `instance_type` at once fit the quota (a ListServiceQuotas entry; None:
    the region has no such quota, so the type is not offered there). setting: the configuration field
    that picks the type; lower: what to lower instead of raising the quota."""
    quota_name = sagemaker_quota_name(instance_type, usage)  # type: ignore[arg-type]
    if quota is None:
        return Check(name, "fail", f"{instance_type} is not offered for {usage} use in {region} (Service Quotas "
                                   f"has no \"{quota_name}\"): choose another {setting}")
    value = float(quota.get("Value", 0))
    code = quota.get("QuotaCode", "")
    if value < need:
        return Check(name, "fail", f"{need} x {instance_type} needed at once, but the quota \"{quota_name}\" ({code}) "
                                   f"is {value:g} in {region}: request an increase to {need} in Service Quotas, "
                                   f"or lower {lower}")
    return Check(name, "pass", f"{need} x {instance_type} at once, within the quota of {value:g} ({code})")


# On-Demand vCPU quotas of EC2 by instance family (Service Quotas, service code "ec2").
_EC2_STANDARD = ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances")
_EC2_FAMILY_QUOTAS = {
    "inf": ("L-1945791B", "Running On-Demand Inf instances"),
    "trn": ("L-2C3B7624", "Running On-Demand Trn instances"),
    "dl": ("L-6E869C2A", "Running On-Demand DL instances"),
    "vt": ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    "g": ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    "p": ("L-417A185B", "Running On-Demand P instances"),
    "f": ("L-74FC7D96", "Running On-Demand F instances"),
    "x": ("L-7295265B", "Running On-Demand X instances"),
    "u": ("L-43DA4232", "Running On-Demand High Memory instances"),
}


def ec2_vcpu_quota(instance_type: str) -> tuple[str, str] | None:
    """(quota code, quota name) of the On-Demand vCPU quota an EC2 instance type counts against."""
    family = re.match(r"[a-z]+", instance_type)
    if family is None:
        return None
    letters = family.group()
    for prefix in ("inf", "trn", "dl", "vt"):  # longer prefixes before the one-letter families
        if letters.startswith(prefix):
            return _EC2_FAMILY_QUOTAS[prefix]
    if letters[0] in "acdhimrtz":
        return _EC2_STANDARD
    return _EC2_FAMILY_QUOTAS.get(letters[0])


def vcpu_quota_check(instance_type: str, vcpus: int, quota_value: float | None, region: str) -> Check:
    """One EC2 training instance of `vcpus` against its family's vCPU quota (None: unreadable)."""
    code, quota_name = ec2_vcpu_quota(instance_type) or ("", "its family's On-Demand vCPU quota")
    if quota_value is None:
        return Check("EC2 vCPU quota", "warn", f"could not read \"{quota_name}\" ({code}) in {region}; "
                                               f"{instance_type} needs {vcpus} vCPUs of it")
    if quota_value < vcpus:
        return Check("EC2 vCPU quota", "fail",
                     f"{instance_type} needs {vcpus} vCPUs, but \"{quota_name}\" ({code}) is {quota_value:g} in "
                     f"{region}: request an increase to at least {vcpus} in Service Quotas, or choose a smaller "
                     "training.ec2_instance_type")
    return Check("EC2 vCPU quota", "pass", f"{instance_type}: {vcpus} vCPUs of {quota_value:g} ({code}); instances "
                                           "already running count against it too")


# -- the caller's permissions ----------------------------------------------------------------------

def denied_pairs(evaluation_results: Sequence[Mapping]) -> list[tuple[str, str, str]]:
    """(action, resource, decision) of every pair SimulatePrincipalPolicy did not allow."""
    denied = []
    for result in evaluation_results:
        action = result.get("EvalActionName", "")
        per_resource = result.get("ResourceSpecificResults") or []
        if per_resource:
            denied += [(action, r.get("EvalResourceName", "*"), r.get("EvalResourceDecision", ""))
                       for r in per_resource if r.get("EvalResourceDecision") != "allowed"]
        elif result.get("EvalDecision") != "allowed":
            denied.append((action, result.get("EvalResourceName", "*"), result.get("EvalDecision", "")))
    return denied


def permissions_check(principal: str, denied: Sequence[tuple[str, str, str]], simulated: int) -> Check:
    """The caller may do everything the run does, or which actions on which resources it may not."""
    if not denied:
        return Check("caller permissions", "pass", f"{principal} may do all {simulated} actions the run needs")
    shown = "; ".join(f"{action} on {resource} ({decision})" for action, resource, decision in denied[:8])
    more = f" and {len(denied) - 8} more" if len(denied) > 8 else ""
    return Check("caller permissions", "fail",
                 f"{principal} may not: {shown}{more}. Attach the policy `sagemaker-flows plan --caller-policy` "
                 "prints (or grant these)")


# -- rendering --------------------------------------------------------------------------------------

def change_lines(plan: Plan) -> list[str]:
    """Terraform-like: `+ create  role  name  (detail)`, then the counts."""
    width = max((len(c.kind) for c in plan.changes), default=0)
    lines = [f"  {SYMBOLS[c.action]} {c.action:<6}  {c.kind:<{width}}  {c.name}"
             + (f"  ({c.detail})" if c.detail else "") for c in plan.changes]
    counts = plan.counts()
    lines.append(f"Plan: {counts['create']} to create, {counts['update']} to update, {counts['keep']} to keep, "
                 f"{counts['delete']} to delete.")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(plan: Plan) -> dict[str, str]:
    """The plan as three markdown documents (Prefect artifacts): changes, costs, checks."""
    changes = ["| | action | kind | name | detail |", "|---|---|---|---|---|", *(
        f"| `{SYMBOLS[c.action]}` | {c.action} | {c.kind} | `{_cell(c.name)}` | {_cell(c.detail)} |"
        for c in plan.changes)]
    total = monthly_total(plan.costs)
    costs = ["| item | amount | per | basis |", "|---|---:|---|---|", *(
        f"| {c.item} | {c.shown} | {c.period} | {_cell(c.basis)} |" for c in plan.costs),
        "", f"A month at minimum capacity: {'unknown' if total is None else f'${total:,.2f}'} "
            f"({plan.currency}; prices as of {plan.prices_as_of or 'n/a'}). {_cell(plan.prices_source)}"]
    checks = ["| check | status | message |", "|---|---|---|", *(
        f"| {c.name} | {c.status} | {_cell(c.message)} |" for c in plan.checks)]
    return {"changes": "\n".join(changes), "costs": "\n".join(costs), "checks": "\n".join(checks)}
