"""The `sagemaker-flows` command."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _demo_data(args: argparse.Namespace) -> int:
    from core.demo_data import write_demo_dataset

    summary = write_demo_dataset(args.directory, seed=args.seed, image_size=args.image_size, per_class=args.per_class)
    verb = "reused" if summary.reused else "wrote"
    counts = ", ".join(f"{split} {n}" for split, n in summary.counts.items())
    print(f"{verb} {summary.root}: {len(summary.classes)} classes; {counts} images")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Demo data, then a local tuning job (4 trials, 2 at a time) with a live trial table."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from backends.local.state import DEFAULT_BUCKET, LocalState
    from backends.local.store import LocalStore
    from backends.local.tuning import LocalTuning, TuningJobSpec
    from core.demo import demo_config
    from core.demo_data import write_demo_dataset
    from core.hyperparameters import static_hyperparameters
    from core.names import TUNING_JOB_MAX, timestamped_name

    console = Console()
    timings: list[tuple[str, float]] = []
    started = time.perf_counter()
    summary = write_demo_dataset(args.data_dir)
    config = demo_config(str(Path(args.data_dir).resolve()))
    timings.append(("demo data", time.perf_counter() - started))

    state = LocalState.resolve(config.local.home)
    store = LocalStore(state.store)
    step = time.perf_counter()
    staged = store.sync_folder(config.data.source, f"s3://{DEFAULT_BUCKET}/{config.project}/{config.stage}/datasets/digits")
    timings.append(("stage dataset", time.perf_counter() - step))
    console.print(f"dataset: {sum(summary.counts.values())} images, staged at {staged.uri} "
                  f"({staged.uploaded} uploaded, {staged.unchanged} unchanged)")

    tuning = config.training.tuning
    spec = TuningJobSpec(
        name=timestamped_name(f"{config.stage}-tune", TUNING_JOB_MAX),
        static_hyperparameters=static_hyperparameters(config.training, tuning.parameter_ranges.names),
        parameter_ranges=tuning.parameter_ranges.to_sagemaker(), inputs={"training": staged.uri},
        output_uri=f"s3://{DEFAULT_BUCKET}/{config.project}/{config.stage}/jobs",
        objective_metric=tuning.objective.metric, objective_type=tuning.objective.type, strategy=tuning.strategy,
        max_jobs=tuning.max_jobs, max_parallel_jobs=tuning.max_parallel_jobs, cpus=config.local.cpus,
        seed=config.training.seed)
    step = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task(f"tuning {spec.name} ({spec.strategy})", total=spec.max_jobs)

        def on_trial(trial, done, total):
            objective = f"{trial.objective:.4f}" if trial.objective is not None else trial.failure_reason
            progress.console.print(f"  trial {trial.name}: {trial.status} {tuning.objective.metric}={objective}")
            progress.update(bar, completed=done, total=total)

        result = LocalTuning(state).run(spec, on_trial=on_trial)
    timings.append(("tune hyperparameters", time.perf_counter() - step))
    _print_trials(console, result)
    _print_timings(console, timings)
    if result.status != "Completed":
        console.print(f"[red]tuning failed: {result.failure_reason}[/red]")
        return 1
    best = result.best
    console.print(f"best trial {best.name}: {tuning.objective.metric}={best.objective:.4f} "
                  f"test_accuracy={best.final_metrics.get('test_accuracy', float('nan')):.4f}\n"
                  f"model: {best.model_artifact} (on disk: {store.path(best.model_artifact)})")
    return 0


def _print_trials(console, result) -> None:
    from rich.table import Table

    table = Table(title=f"tuning job {result.name}: {result.objective_metric} ({result.objective_type})")
    for column in ("trial", "hyperparameters", result.objective_metric, "test_accuracy", "status", "seconds"):
        table.add_column(column)
    for t in result.trials:
        hps = " ".join(f"{k}={v}" for k, v in t.tuned_hyperparameters.items())
        objective = "" if t.objective is None else f"{t.objective:.4f}"
        accuracy = f"{t.final_metrics['test_accuracy']:.4f}" if "test_accuracy" in t.final_metrics else ""
        status = t.status + (" (best)" if t.name == result.best_trial else "")
        if t.failure_reason:
            status += f": {t.failure_reason}"
        table.add_row(t.name, hps, objective, accuracy, status, f"{t.duration_seconds:.1f}")
    console.print(table)


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

    demo = commands.add_parser("demo", help="run the demo on the local backend")
    demo.add_argument("--data-dir", default="demo-data")
    demo.set_defaults(handler=_demo)

    local = commands.add_parser("local", help="the local gateway: up, down, status")
    local.add_argument("action", choices=("up", "down", "status"))
    local.add_argument("--json", action="store_true", help="status as JSON, for scripts")
    local.add_argument("--port", type=int, default=0, help="port for `up` (default: any free port)")
    local.add_argument("--home", default=None, help="state folder (default: $SAGEMAKER_FLOWS_HOME or ./.sagemaker-flows)")
    local.set_defaults(handler=_local)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
