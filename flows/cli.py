"""The `sagemaker-flows` command: run the pipeline's flows, serve them as Prefect deployments, and
look after the local gateway and Prefect server."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from flows import cli_output as output
from flows.cli_errors import aws_problem


# -- configuration ------------------------------------------------------------------------
def _config(args: argparse.Namespace):
    """--demo (the demo dataset, written first when needed) or --config FILE, then --set overrides."""
    from core.config_io import apply_overrides, load_config, validate_config

    if getattr(args, "demo", False):
        from core.demo import demo_config
        from core.demo_data import write_demo_dataset

        write_demo_dataset(args.data_dir)
        base = demo_config(str(Path(args.data_dir).resolve())).model_dump(mode="json")
        return validate_config(apply_overrides(base, args.set or ()))
    return load_config(args.config, overrides=args.set or ())


def _state(config):
    from backends.local.state import LocalState

    return LocalState.resolve(config.local.home)


@contextlib.contextmanager
def _prefect_api(config) -> Iterator[str]:
    """The Prefect server runs go to: PREFECT_API_URL when set, else the local one (started if need be)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from deployments.local_prefect import ensure_server, running_server

    state = _state(config)
    if running_server(state) is None:
        print("starting a local Prefect server on 127.0.0.1 (the first start creates its database)...",
              file=sys.stderr, flush=True)
    server = ensure_server(state)
    print(f"Prefect UI: {server.url}", file=sys.stderr)
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield server.api_url


def _run_flow(flow, config, *args):
    """Run `flow` here, against the Prefect server, with progress bars on a terminal; then say where
    the run, its artifacts and its training curves are in the UI."""
    from prefect.settings import PREFECT_UI_URL

    from flows.terminal import live_progress

    with live_progress():
        state = flow(config, *args, return_state=True)
    ui = PREFECT_UI_URL.value()
    if ui:
        print(f"this run in the Prefect UI: {ui.rstrip('/')}/runs/flow-run/{state.state_details.flow_run_id}",
              file=sys.stderr)
    return state.result()


# -- commands -----------------------------------------------------------------------------
def _demo_data(args: argparse.Namespace) -> int:
    from core.demo_data import write_demo_dataset

    summary = write_demo_dataset(args.directory, seed=args.seed, image_size=args.image_size, per_class=args.per_class)
    verb = "reused" if summary.reused else "wrote"
    counts = ", ".join(f"{split} {n}" for split, n in summary.counts.items())
    print(f"{verb} {summary.root}: {len(summary.classes)} classes; {counts} images")
    return 0


def _run(args: argparse.Namespace) -> int:
    from flows.train_and_deploy import train_and_deploy

    config = _config(args)
    with _prefect_api(config) as api_url:
        result = _run_flow(train_and_deploy, config)
        output.print_result(result)
        if args.demo:
            _serve_in_background(config, api_url)
            sample = next(Path(args.data_dir, "test").rglob("*.png"))
            output.print_how_to_call(result, sample)
    return 0


def _serve_in_background(config, api_url: str) -> None:
    """Keep the pipeline's deployments served, so Run in the UI works after this command ends."""
    from backends.files import write_atomic
    from deployments.local_prefect import ensure_runner

    state = _state(config)
    config_file = state.home / "deployments" / f"{config.project}-{config.stage}.json"
    write_atomic(config_file, config.model_dump_json(indent=2))
    ensure_runner(state, api_url, config_file)
    print(f"deployments train-and-deploy, retrain (cron {config.schedule.retrain_cron!r}), teardown and "
          f"rollback of {config.project}-{config.stage} are served in the background; "
          "`sagemaker-flows local down` stops them")


def _retrain(args: argparse.Namespace) -> int:
    from flows.retrain import retrain

    config = _config(args)
    with _prefect_api(config):
        result = _run_flow(retrain, config)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        from rich.console import Console

        console = Console()
        verdict = "promoted" if result.promoted else "not promoted"
        console.print(f"challenger {result.challenger.label} {verdict}: {result.reason}")
        console.print(f"the endpoint serves {result.serving or 'nothing'}")
        output.print_timings(console, list(result.step_seconds.items()))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from flows.rollback import rollback

    config = _config(args)
    with _prefect_api(config):
        result = _run_flow(rollback, config, args.to)
    print(f"the endpoint serves {result.serving} (smoke test {result.smoke_test_accuracy:.0%} right)")
    return 0


def _releases(args: argparse.Namespace) -> int:
    from backends import get_backend

    config = _config(args)
    backend = get_backend(config.backend, config)
    try:
        versions = backend.registry.list_model_versions(config.names.model_group)
    finally:
        backend.close()
    if args.json:
        print(json.dumps([{"version": v.version, "label": v.label, "champion": v.champion, "status": v.status,
                           "reason": v.status_reason, "status_changed_at": v.status_changed_at,
                           "created_at": v.created_at, "job": v.job_name, "metrics": v.metrics,
                           "dataset_checksum": v.dataset_checksum, "dataset_uri": v.dataset_uri} for v in versions],
                         indent=2))
        return 0
    output.print_releases(config.names.model_group, versions)
    return 0


def _loadtest(args: argparse.Namespace) -> int:
    from backends import get_backend
    from core.loadtest import check_settings
    from flows.loadtest import loadtest
    from flows.loadtest_options import settings_from_arguments
    from tasks.run_load_test import prepare

    config = _config(args)
    settings = settings_from_arguments(args)
    # Checked before any Prefect server starts: bad input is one line, not a failed flow's traceback.
    check_settings(config, settings)
    backend = get_backend(config.backend, config)
    try:
        prepare(config, backend, settings, images_limit=1)
    finally:
        backend.close()
    with _prefect_api(config):
        report = _run_flow(loadtest, config, settings)
    if args.json:
        print(json.dumps(output.load_test_for_scripts(report), indent=2))
    else:
        output.print_load_test(report, recommend=args.recommend)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from deployments.serve import serve

    config = _config(args)
    with _prefect_api(config) as api_url:
        os.environ["PREFECT_API_URL"] = api_url  # the runner's flow-run processes inherit it
        serve(config, cron=args.cron, ready_file=Path(args.ready_file) if args.ready_file else None)
    return 0


def _teardown(args: argparse.Namespace) -> int:
    from flows.teardown import teardown

    config = _config(args)
    with _prefect_api(config):
        report = teardown(config)
    for item in report.removed or ["nothing to remove"]:
        print(f"removed {item}" if report.removed else item)
    for item in report.kept:
        print(f"kept {item}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    """What a run would create, update or keep, its costs and its pre-flight checks; exit 1 when a check
    fails. --caller-policy: the least-privilege policies of whoever runs the pipeline on aws."""
    from backends import get_backend

    config = _config(args)
    if args.prices:
        if config.backend != "aws":
            raise ValueError(f"--prices {args.prices}: a price table prices AWS; the {config.backend} backend's runs "
                             "cost nothing, so it has no use for one")
        config.preflight.prices_file = args.prices
    if args.caller_policy is not None and config.backend != "aws":
        raise ValueError("--caller-policy is the policy of an AWS caller: it needs backend: aws")
    backend = get_backend(config.backend, config)
    try:
        if args.caller_policy is not None:
            documents = backend.planning.caller_policies(config)
            if args.json:
                print(json.dumps(documents, indent=2))
            else:
                output.print_caller_policies(documents, {name: backend.planning.policy_arn(name) for name in documents},
                                             Path(args.caller_policy) if args.caller_policy else None)
            return 0
        plan = backend.planning.plan(config)
    finally:
        backend.close()
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        output.print_plan(plan, f"plan of {config.project}-{config.stage}", enforce=config.preflight.enforce)
    return 1 if plan.failed else 0


def _local(args: argparse.Namespace) -> int:
    """local up | down | status: the gateway, the local Prefect server and the deployments runner."""
    from backends.local.gateway.client import GatewayClient
    from backends.local.gateway.server import ensure_gateway, running_gateway, stop_gateway
    from backends.local.state import LocalState
    from deployments.local_prefect import (ensure_server, running_runner, running_server, stop_runner,
                                           stop_server)

    state = LocalState.resolve(args.home)
    if args.action == "up":
        info = ensure_gateway(state, args.port)
        print(f"local gateway at {info.url} (pid {info.pid})")
        server = ensure_server(state)
        print(f"local Prefect server at {server.url} (pid {server.pid}); PREFECT_API_URL={server.api_url}")
        return 0
    if args.action == "down":
        print("deployments runner stopped" if stop_runner(state) else "no deployments runner was running")
        print("local Prefect server stopped" if stop_server(state) else "no local Prefect server was running")
        print("local gateway stopped" if stop_gateway(state) else "no local gateway was running")
        return 0
    info, server, runner = running_gateway(state), running_server(state), running_runner(state)
    prefect = {"url": server.url, "api_url": server.api_url, "pid": server.pid} if server else None
    served = {"pid": runner["pid"], "config": runner["config"]} if runner else None
    if info is None:
        if args.json:
            print(json.dumps({"gateway": None, "endpoints": [], "functions": [], "prefect": prefect,
                              "runner": served}))
        else:
            print("no local gateway running" + (f"; Prefect UI at {server.url}" if server else ""))
        return 0 if args.json else 1
    client = GatewayClient.of(info)
    try:
        status = client.status()
    finally:
        client.close()
    if args.json:
        print(json.dumps({**output.status_for_scripts(status), "prefect": prefect, "runner": served}, indent=2))
    else:
        output.print_status(status)
        if server:
            print(f"Prefect UI at {server.url}" + (f"; deployments served (pid {runner['pid']})" if runner else ""))
    return 0


# -- arguments ----------------------------------------------------------------------------
def _pipeline_arguments(sub: argparse.ArgumentParser, demo_default: bool = False) -> None:
    source = sub.add_mutually_exclusive_group()
    source.add_argument("--config", help="a YAML file of PipelineConfig settings")
    source.add_argument("--demo", action="store_true", default=demo_default,
                        help="the demo pipeline on the digits demo data (written to --data-dir when missing)")
    sub.add_argument("--data-dir", default="demo-data", help="where --demo keeps its data (default: demo-data)")
    sub.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a setting")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sagemaker-flows", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("demo-data", help="write the digits demo dataset (train/valid/test ImageFolder)")
    data.add_argument("directory")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--image-size", type=int, default=32)
    data.add_argument("--per-class", type=int, default=None, help="at most this many images per class")
    data.set_defaults(handler=_demo_data)

    demo = commands.add_parser("demo", help="the whole pipeline on the local backend on the digits demo data, "
                                            "then its deployments served in the background")
    _pipeline_arguments(demo, demo_default=True)
    demo.set_defaults(handler=_run)

    for command, handler, text in (
            ("run", _run, "run the train-and-deploy pipeline"),
            ("retrain", _retrain, "train a challenger; promote it only if it beats the champion"),
            ("releases", _releases, "the model versions: status, metrics, data, when and why promoted or rejected"),
            ("teardown", _teardown, "remove what the pipeline made (registered models stay)")):
        sub = commands.add_parser(command, help=text)
        _pipeline_arguments(sub)
        if command in ("retrain", "releases"):
            sub.add_argument("--json", action="store_true", help="one JSON document, for scripts")
        sub.set_defaults(handler=handler)

    plan = commands.add_parser("plan", help="what a run would create, update or keep, what it costs, and its "
                                            "pre-flight checks (exit 1 when one fails)")
    _pipeline_arguments(plan)
    plan.add_argument("--prices", metavar="FILE", help="a price table (JSON) instead of the shipped one")
    plan.add_argument("--json", action="store_true", help="the plan as one JSON document, for scripts")
    plan.add_argument("--caller-policy", nargs="?", const="", metavar="FOLDER",
                      help="the least-privilege IAM policy of whoever runs the pipeline (aws) as managed policies "
                           "of one service each: printed, or written to FOLDER as NAME.json with the commands that "
                           "create and attach them; then exit")
    plan.set_defaults(handler=_plan)

    back = commands.add_parser("rollback", help="serve an earlier model version again")
    _pipeline_arguments(back)
    back.add_argument("--to", type=int, required=True, metavar="N", help="the model version to serve")
    back.set_defaults(handler=_rollback)

    load = commands.add_parser(
        "loadtest", help="an open-loop load test of the deployed endpoint or function: latency, throughput, errors "
                         "and instances over time; --recommend: the capacity settings it supports",
        description="Send an open-loop load (steps or a ramp of requests per second, bounded in requests and "
                    "seconds) to the pipeline's deployed endpoint (or, --target function, its Lambda), and report "
                    "latency, throughput, errors and the instance count over time against a p95 objective. "
                    "--recommend turns the rate one instance sustained into autoscaling settings (and, for a "
                    "function with --peak-rps, provisioned concurrency), priced on AWS. On aws you pay the endpoint's "
                    "instance-hours while it runs, and any instances it scales out to stay until traffic is low "
                    "again (without traffic nothing scales in). Images: --images, else the test split of data.source "
                    "(a sample of an s3:// source's test/).")
    _pipeline_arguments(load)
    from flows.loadtest_options import add_arguments

    add_arguments(load)
    load.set_defaults(handler=_loadtest)

    serve = commands.add_parser("serve", help="serve the pipeline's deployments (train-and-deploy, retrain on a "
                                              "cron schedule, teardown, rollback) until interrupted")
    _pipeline_arguments(serve)
    serve.add_argument("--cron", help="the retrain schedule (default: schedule.retrain_cron, Mondays 03:00)")
    serve.add_argument("--ready-file", help=argparse.SUPPRESS)
    serve.set_defaults(handler=_serve)

    local = commands.add_parser("local", help="the local gateway and Prefect server: up, down, status")
    local.add_argument("action", choices=("up", "down", "status"))
    local.add_argument("--json", action="store_true", help="status as JSON, for scripts")
    local.add_argument("--port", type=int, default=0, help="gateway port for `up` (default: any free port)")
    local.add_argument("--home", default=None, help="state folder (default: $SAGEMAKER_FLOWS_HOME or ./.sagemaker-flows)")
    local.set_defaults(handler=_local)
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.retry import PermanentError

    # Offline first: no telemetry from Prefect's server (there may be no network to send it to).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) in ("run", "plan", "loadtest") and not (args.config or args.demo):
        print(f"error: {args.command} needs --config FILE (or --demo)", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (FileExistsError, FileNotFoundError, ValueError, PermanentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = aws_problem(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
