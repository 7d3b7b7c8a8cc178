"""What the `sagemaker-flows` command prints: results, timings, releases, the local gateway's status."""
from __future__ import annotations

import json
import sys
from pathlib import Path


# -- output -------------------------------------------------------------------------------
def print_result(result, timings: dict[str, float] | None = None) -> None:
    from rich.console import Console

    console = Console()
    m = result.metrics
    console.print(f"model {result.model_group} version {result.model_version} from {result.job_name}: "
                  f"test_accuracy={m.get('test_accuracy', float('nan')):.4f} valid_loss={m.get('valid_loss', float('nan')):.4f}")
    console.print(f"endpoint {result.endpoint_name}: {result.endpoint_invoke_url}")
    console.print(f"function {result.function_name}: {result.function_invoke_url}")
    console.print(f"smoke test through the function: accuracy {result.smoke_test_accuracy:.2%}, "
                  f"p50 {result.smoke_test_p50_ms:.1f} ms")
    print_timings(console, list((timings or result.step_seconds).items()))


def print_how_to_call(result, sample: Path) -> None:
    url = result.aws_endpoint_url
    print(f"""
The endpoint and the function keep running (stop them with `sagemaker-flows teardown` or
`sagemaker-flows local down`). Call them:

  curl -s -H 'Content-Type: image/png' --data-binary @{sample} \\
    {result.endpoint_invoke_url}

  curl -s -d '{{"image": "'$(base64 -w0 {sample})'"}}' \\
    {result.function_invoke_url}

  import base64, json, boto3
  runtime = boto3.client("sagemaker-runtime", endpoint_url="{url}", region_name="us-east-1")
  print(runtime.invoke_endpoint(EndpointName="{result.endpoint_name}", ContentType="image/png",
                                Body=open("{sample}", "rb").read())["Body"].read())
  lam = boto3.client("lambda", endpoint_url="{url}", region_name="us-east-1")
  event = {{"image": base64.b64encode(open("{sample}", "rb").read()).decode()}}
  print(json.loads(lam.invoke(FunctionName="{result.function_name}", Payload=json.dumps(event))["Payload"].read()))

Retrain it (a challenger replaces the champion only if it is significantly better):
  sagemaker-flows retrain --demo
""")


def print_timings(console, timings) -> None:
    from rich.table import Table

    table = Table(title="steps")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in timings:
        table.add_row(name, f"{seconds:.1f}")
    table.add_row("total", f"{sum(s for _, s in timings):.1f}")
    console.print(table)


def print_releases(group: str, versions) -> None:
    from datetime import datetime

    from rich.console import Console
    from rich.table import Table

    when = lambda t: datetime.fromtimestamp(t).strftime("%m-%d %H:%M") if t else ""  # noqa: E731
    table = Table(title=f"releases of {group} (--json for every field)")
    for column, options in (("#", {"justify": "right"}), ("status", {}), ("test acc", {"justify": "right"}),
                            ("data", {}), ("changed", {}), ("why", {"ratio": 1})):
        table.add_column(column, **options)
    for v in versions:
        status = "champion" if v.champion else {"PendingManualApproval": "pending"}.get(v.status, v.status.lower())
        accuracy = v.metrics.get("test_accuracy")
        table.add_row(str(v.version), status, "" if accuracy is None else f"{accuracy:.3f}", v.dataset_checksum[:7],
                      when(v.status_changed_at or v.created_at), v.status_reason)
    Console().print(table if versions else f"no versions registered in {group}")


def status_for_scripts(status: dict) -> dict:
    return {
        "gateway": status["gateway"],
        "endpoints": [{"name": e["name"], "invoke_url": e["invoke_url"], "instances": e["instance_count"],
                       "model_version": e["model_version"], "autoscaling": e.get("autoscaling"),
                       "scaling_activities": e.get("scaling_activities", []),
                       "status": e["status"]} for e in status["endpoints"]],
        "functions": [{"name": f["name"], "invoke_url": f["invoke_url"],
                       "reserved_concurrency": f["reserved_concurrency"],
                       "provisioned_concurrency": f["provisioned_concurrency"]} for f in status["functions"]],
    }


def print_status(status: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"local gateway at {status['gateway']['url']} (pid {status['gateway']['pid']})")
    endpoints = Table(title="endpoints")
    for column in ("name", "status", "instances", "model version", "autoscaling", "invoke URL"):
        endpoints.add_column(column)
    for e in status["endpoints"]:
        scaling = e.get("autoscaling") or {}
        scaling_text = f"{scaling.get('min_capacity')}..{scaling.get('max_capacity')}" if scaling else "off"
        if scaling.get("time_scale", 1) != 1:
            scaling_text += f" at time scale {scaling['time_scale']:g}"
        if e.get("scaling_activities"):
            last = e["scaling_activities"][-1]
            scaling_text += f"; last {last['from']}->{last['to']} ({last['status']})"
        instances = ", ".join(f"{i.get('pid')}:{i.get('state')}" for i in e.get("instances", []))
        endpoints.add_row(e["name"], e["status"], f"{e['instance_count']} ({instances})", e["model_version"],
                          scaling_text, e["invoke_url"])
    console.print(endpoints)
    functions = Table(title="functions")
    for column in ("name", "reserved", "provisioned", "environments", "invocations", "cold starts", "throttles", "invoke URL"):
        functions.add_column(column)
    for f in status["functions"]:
        functions.add_row(f["name"], str(f["reserved_concurrency"]), str(f["provisioned_concurrency"]),
                          str(f.get("environments", "")), str(f.get("invocations", "")), str(f.get("cold_starts", "")),
                          str(f.get("throttles", "")), f["invoke_url"])
    console.print(functions)


def print_plan(plan, title: str, enforce: bool = True) -> None:
    """`sagemaker-flows plan`: the changes terraform-style, the costs, the pre-flight checks. enforce:
    preflight.enforce, whether a failed check stops a run."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from core.costs import monthly_total
    from core.plan import change_lines

    print(f"{title} ({plan.backend}, {plan.region}):")
    print("\n".join(change_lines(plan)))  # plain: names are not rich markup
    console = Console()
    dated = f", on-demand prices as of {plan.prices_as_of}" if plan.prices_as_of else ""
    costs = Table(title=f"costs ({plan.currency}{dated})")
    for column, options in (("item", {}), ("amount", {"justify": "right"}), ("per", {}), ("basis", {"ratio": 1})):
        costs.add_column(column, **options)
    for line in plan.costs:
        costs.add_row(line.item, line.shown, line.period, Text(line.basis))  # Text: no rich markup
    console.print(costs)
    total = monthly_total(plan.costs)
    console.print(f"a month at minimum capacity: {'unknown' if total is None else f'${total:,.2f}'}", markup=False)
    if plan.prices_source:
        console.print(f"prices: {plan.prices_source}", markup=False, style="dim")
    checks = Table(title="pre-flight checks")
    for column, options in (("check", {}), ("status", {}), ("what was found, and what to change", {"ratio": 1})):
        checks.add_column(column, **options)
    colour = {"pass": "green", "warn": "yellow", "fail": "bold red"}
    for check in plan.checks:
        checks.add_row(check.name, Text(check.status, style=colour[check.status]), Text(check.message))
    console.print(checks)
    if plan.failed and enforce:
        console.print(f"{len(plan.failed)} check(s) failed: a run stops before anything is paid for "
                      "(preflight.enforce=false makes them warnings)", markup=False, style="bold red")
    elif plan.failed:
        console.print(f"{len(plan.failed)} check(s) failed and preflight.enforce is false: a run does not stop "
                      "for them, and may fail half-way, after some of it is paid for", markup=False, style="bold red")


def print_caller_policies(documents: dict[str, dict], arns: dict[str, str], folder: Path | None = None) -> None:
    """`plan --caller-policy [FOLDER]`: each managed policy under a heading; with FOLDER, each written to
    FOLDER/NAME.json instead, and the commands that create them and attach them to the caller."""
    from backends.files import write_json
    from core.caller_policy import MANAGED_POLICY_MAX, policy_size

    if folder is None:
        for name, document in documents.items():
            print(f"# {name} ({policy_size(document):,} of IAM's {MANAGED_POLICY_MAX:,} characters)")
            print(json.dumps(document, indent=2))
        print("# --caller-policy FOLDER writes each to FOLDER/NAME.json and prints the commands that create and "
              "attach them")
        return
    for name, document in documents.items():
        write_json(folder / f"{name}.json", document)
    print(f"wrote {len(documents)} policies to {folder}/ (each within IAM's {MANAGED_POLICY_MAX:,} characters). "
          "Create them once, and attach each to the user or role that runs the pipeline:")
    for name in documents:
        print(f"  aws iam create-policy --policy-name {name} --policy-document file://{folder / name}.json")
    for arn in arns.values():
        print(f"  aws iam attach-user-policy --user-name USER --policy-arn {arn}")
    print("(a role: aws iam attach-role-policy --role-name ROLE --policy-arn ...). After a change of the "
          "configuration, write them again and update each: aws iam create-policy-version --policy-arn ARN "
          f"--policy-document file://{folder}/NAME.json --set-as-default")


def load_test_for_scripts(report) -> dict:
    from dataclasses import asdict

    document = asdict(report)
    document["verdict"]["passed"] = report.verdict.passed
    document["overrides"] = report.plan.overrides() if report.plan else []
    return document


def print_load_test(report, recommend: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=120)  # a file or pipe gets the whole table
    ms = lambda v: "" if v is None else f"{v:.0f}"  # noqa: E731
    table = Table(title=f"load test of {report.target} ({report.duration:g} s, {report.images} images; "
                        f"--json for every second)")
    for column in ("step", "offered rps", "achieved rps", "p50 ms", "p95 ms", "p99 ms", "errors", "throttled",
                   "dropped", "instances"):
        table.add_column(column, justify="right")
    for i, s in enumerate(report.steps, 1):
        table.add_row(str(i), f"{s.offered_rps:g}", f"{s.achieved_rps:.2f}", ms(s.p50_ms), ms(s.p95_ms),
                      ms(s.p99_ms), str(s.errors), str(s.throttled), str(s.dropped), f"{s.instances:g}")
    console.print(table)
    console.print(f"[bold]{'passed' if report.verdict.passed else 'not passed'}[/bold]: {report.verdict.summary}")
    for finding in report.verdict.findings:
        console.print(f"  - {finding}")
    if report.stopped != "the schedule's end":
        console.print(f"  sending stopped at {report.stopped}")
    if not recommend:
        return
    if report.plan is None:
        console.print(report.cost_note)
        return
    plan = report.plan
    bound = " at least" if report.verdict.passed else ""  # no step went past the objective
    console.print(f"recommended (one instance sustains{bound} {plan.sustainable_per_instance_per_minute:g} invocations "
                  f"a minute at p95 <= {plan.p95_objective_ms:g} ms; the target keeps half of it as headroom):")
    console.print("  " + " ".join(f"--set {o}" for o in plan.overrides()), soft_wrap=True, highlight=False)
    console.print(f"monthly cost of each choice: {report.cost_note}")
    money = lambda v: "-" if v is None else f"${v:,.2f}"  # noqa: E731
    width = max((len(c.setting) for c in report.costs), default=0)
    for c in report.costs:
        console.print(f"  {c.setting:<{width}}  {c.configured} -> {c.recommended}: {money(c.configured_monthly)} -> "
                      f"{money(c.recommended_monthly)}  ({c.basis})", soft_wrap=True, highlight=False)
