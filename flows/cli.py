"""The `sagemaker-flows` command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo_data(args: argparse.Namespace) -> int:
    from core.demo_data import write_demo_dataset

    summary = write_demo_dataset(args.directory, seed=args.seed, image_size=args.image_size, per_class=args.per_class)
    verb = "reused" if summary.reused else "wrote"
    counts = ", ".join(f"{split} {n}" for split, n in summary.counts.items())
    print(f"{verb} {summary.root}: {len(summary.classes)} classes; {counts} images")
    return 0


def _load(args: argparse.Namespace):
    from core.config_io import load_config

    return load_config(args.config, overrides=args.set or ())


def _run(args: argparse.Namespace) -> int:
    from flows.train_and_deploy import train_and_deploy

    config = _load(args)
    result = train_and_deploy(config)
    _print_result(result)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Demo data, then the whole pipeline on the local backend: tuning (4 trials, 2 at a time) to a Lambda."""
    import time

    from core.config_io import apply_overrides, validate_config
    from core.demo import demo_config
    from core.demo_data import write_demo_dataset
    from flows.train_and_deploy import train_and_deploy

    started = time.perf_counter()
    summary = write_demo_dataset(args.data_dir)
    base = demo_config(str(Path(args.data_dir).resolve())).model_dump(mode="json")
    config = validate_config(apply_overrides(base, args.set or ()))
    data_seconds = time.perf_counter() - started
    result = train_and_deploy(config)
    _print_result(result, {"demo data": data_seconds, **result.step_seconds})
    sample = next(Path(summary.root, "test").rglob("*.png"))
    _print_how_to_call(result, sample)
    return 0


def _teardown(args: argparse.Namespace) -> int:
    from flows.teardown import teardown

    report = teardown(_load(args))
    for item in report.removed or ["nothing to remove"]:
        print(f"removed {item}" if report.removed else item)
    for item in report.kept:
        print(f"kept {item}")
    return 0


def _print_result(result, timings: dict[str, float] | None = None) -> None:
    from rich.console import Console

    console = Console()
    m = result.metrics
    console.print(f"model {result.model_group} version {result.model_version} from {result.job_name}: "
                  f"test_accuracy={m.get('test_accuracy', float('nan')):.4f} valid_loss={m.get('valid_loss', float('nan')):.4f}")
    console.print(f"endpoint {result.endpoint_name}: {result.endpoint_invoke_url}")
    console.print(f"function {result.function_name}: {result.function_invoke_url}")
    console.print(f"smoke test through the function: accuracy {result.smoke_test_accuracy:.2%}, "
                  f"p50 {result.smoke_test_p50_ms:.1f} ms")
    _print_timings(console, list((timings or result.step_seconds).items()))


def _print_how_to_call(result, sample: Path) -> None:
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
""")


def _print_timings(console, timings) -> None:
    from rich.table import Table

    table = Table(title="steps")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, seconds in timings:
        table.add_row(name, f"{seconds:.1f}")
    table.add_row("total", f"{sum(s for _, s in timings):.1f}")
    console.print(table)


def _local(args: argparse.Namespace) -> int:
    """local up | down | status: the gateway that hosts local endpoints and functions."""
    import json

    from backends.local.gateway.client import GatewayClient
    from backends.local.gateway.server import ensure_gateway, running_gateway, stop_gateway
    from backends.local.state import LocalState

    state = LocalState.resolve(args.home)
    if args.action == "up":
        info = ensure_gateway(state, args.port)
        print(f"local gateway at {info.url} (pid {info.pid})")
        return 0
    if args.action == "down":
        print("local gateway stopped" if stop_gateway(state) else "no local gateway was running")
        return 0
    info = running_gateway(state)
    if info is None:
        print(json.dumps({"gateway": None, "endpoints": [], "functions": []}) if args.json else "no local gateway running")
        return 0 if args.json else 1
    status = GatewayClient(info.url).status()
    if args.json:
        print(json.dumps(_status_for_scripts(status), indent=2))
    else:
        _print_status(status)
    return 0


def _status_for_scripts(status: dict) -> dict:
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


def _print_status(status: dict) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sagemaker-flows", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("demo-data", help="write the digits demo dataset (train/valid/test ImageFolder)")
    data.add_argument("directory")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--image-size", type=int, default=32)
    data.add_argument("--per-class", type=int, default=None, help="at most this many images per class")
    data.set_defaults(handler=_demo_data)

    demo = commands.add_parser("demo", help="the whole pipeline on the local backend, on the digits demo data")
    demo.add_argument("--data-dir", default="demo-data")
    demo.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a setting")
    demo.set_defaults(handler=_demo)

    for command, handler, text in (("run", _run, "run the train-and-deploy pipeline"),
                                   ("teardown", _teardown, "remove what the pipeline made (registered models stay)")):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("--config", help="a YAML file of PipelineConfig settings")
        sub.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a setting")
        sub.set_defaults(handler=handler)

    local = commands.add_parser("local", help="the local gateway: up, down, status")
    local.add_argument("action", choices=("up", "down", "status"))
    local.add_argument("--json", action="store_true", help="status as JSON, for scripts")
    local.add_argument("--port", type=int, default=0, help="port for `up` (default: any free port)")
    local.add_argument("--home", default=None, help="state folder (default: $SAGEMAKER_FLOWS_HOME or ./.sagemaker-flows)")
    local.set_defaults(handler=_local)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    from core.retry import PermanentError

    # Offline first: Prefect's temporary server would otherwise try to send telemetry and log a failure.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FileExistsError, FileNotFoundError, ValueError, PermanentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
