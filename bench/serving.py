"""Serving latency and throughput: the plain eager fp32 server against the served one, in-process and
through the local endpoint, and the Lambda front, side by side in one run.

Five paths serve the same model and the same JPEG photo:

  (a0) in-process, plain   bench/serving_baseline.py: the eager fp32 model, as training/inference.py served
                           it before it was made fast (and as a plain SageMaker predict_fn does)
  (a)  in-process, served  training/inference.py: handle(body, "image/jpeg", ...) on model_fn(model_dir)'s
                           model (TorchScript fused by oneDNN Graph unless --graph eager; --precision)
  (b0) endpoint, plain     boto3 "sagemaker-runtime" invoke_endpoint of a local endpoint whose artifact's
                           code/inference.py is bench/serving_baseline.py
  (b)  endpoint, served    the same, of an endpoint of the model as training packs it (code/inference.py)
  (c)  Lambda -> (b)       boto3 "lambda" invoke of a local function running lambda_src/handler.py with
                           ENDPOINT_NAME set to (b)'s endpoint. Reserved concurrency 16, provisioned 8, so
                           nothing is throttled and no cold start lands in a measurement.

Each (path, concurrency) measures --requests requests from `concurrency` threads, each thread with its
own client (created, and warmed by one request, before the clock starts), in --rounds rounds that take
the paths in turn, so a change in the machine's load falls on every path alike. Latency is per request
(one image) as the caller sees it; images/s is completed requests over the cell's wall time. Errors are
counted (clients never retry) and their latencies left out of p50/p99. Top-1 agreement: --agreement
distinct photos through (a0), (a), (b0) and (b), each path's best label against (a0)'s. After the
table: where an in-process request's time goes, stage by stage, plain and served.

    .venv/bin/python bench/serving.py           # resnet50 at 224 px (~5 minutes on 2 cores)
    .venv/bin/python bench/serving.py --quick   # resnet18 at 64 px, a few requests (about a minute)

The model is untrained (built with training/model.py: the seed's 133 dog-breed classes, named
class_000...), which costs exactly what a trained one does. A fresh state folder and gateway are
used and the gateway is always stopped at the end. A benchmark reports: it exits 0 whether or not
the targets are met (1 only when it could not set up at all).
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from serving_callers import (ENDPOINT_NAME, FUNCTION_NAME, PLAIN_ENDPOINT_NAME, endpoint_caller, in_process_caller,
                             lambda_caller, plain_caller)  # bench/ is on sys.path when run as a script
from serving_hop import lambda_breakdown
from serving_load import merge_cells, run_cell
from serving_report import LAMBDA_PROVISIONED, LAMBDA_RESERVED, PATHS, PHOTO_SIZE, _fmt, report

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `training`, `backends` and `bench` importable
    sys.path.insert(0, str(REPO_ROOT))

LAMBDA_SOURCE = REPO_ROOT / "lambda_src"
JPEG_QUALITY = 95
QUICK = dict(architecture="resnet18", image_size=64, requests=16, warmup=2, time_limit=60.0, breakdown=8,
             agreement=8, stages=5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--architecture", default="resnet50", help="a torchvision classification model")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--classes", type=int, default=133, help="number of classes (the seed's dog breeds: 133)")
    p.add_argument("--graph", choices=("torchscript", "eager"), default="torchscript",
                   help="the served form's INFERENCE_GRAPH (the plain paths are always eager)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="the served form's INFERENCE_PRECISION (bf16 only where the CPU computes it natively)")
    # Sized so that the default run takes ~5 minutes on 2 CPU cores with resnet50 at 224 px.
    p.add_argument("--requests", type=int, default=100, help="timed requests per (path, concurrency)")
    p.add_argument("--rounds", type=int, default=2, help="rounds each cell's requests are split into")
    p.add_argument("--concurrency", default="1,8", help="comma-separated thread counts (default 1,8)")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests per path before its first cell")
    p.add_argument("--agreement", type=int, default=24, help="distinct photos for top-1 agreement (0: skip)")
    p.add_argument("--stages", type=int, default=20, help="requests per form in the stage profile (0: skip)")
    p.add_argument("--instances", type=int, default=1, help="endpoint instances (worker processes)")
    p.add_argument("--time-limit", type=float, default=420.0,
                   help="seconds for all timed cells together; a cell past its share stops early")
    p.add_argument("--read-timeout", type=float, default=120.0, help="boto3 read timeout, seconds")
    p.add_argument("--breakdown", type=int, default=20,
                   help="requests of the Lambda-hop breakdown after the table (0: skip it)")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: " + ", ".join(f"{k.replace('_', '-')}={v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    if args.quick:  # quick values become the defaults, so explicitly given flags still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        p.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if not args.concurrency or min(args.concurrency) < 1:
        p.error("--concurrency needs positive integers")
    if args.requests < 1 or args.instances < 1 or args.rounds < 1 or min(args.warmup, args.agreement, args.stages) < 0:
        p.error("--requests, --rounds and --instances must be >= 1; --warmup, --agreement and --stages >= 0")
    if max(args.concurrency) > LAMBDA_RESERVED:
        p.error(f"concurrency above the function's reserved concurrency ({LAMBDA_RESERVED}) would be throttled")
    return args


# -- the request and the model -----------------------------------------------------------------
def make_photo_jpeg(seed: int = 0) -> bytes:
    """A 500x375 photo-like JPEG (smooth color fields, a shape, sensor noise): as costly to decode
    as a real photo, which a flat synthetic image would not be."""
    import numpy as np

    from bench.training_throughput import render_photo

    rng = np.random.default_rng(seed)
    glyph = rng.integers(0, 17, (8, 8)).astype(np.float64)  # an 8x8 'digit'-like blob in 0..16
    buffer = io.BytesIO()
    render_photo(glyph, rng).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def make_model(folder: Path, architecture: str, image_size: int, classes: int) -> tuple[Path, Path]:
    """An untrained model saved as training does, and its model.tar.gz: (model_dir, artifact)."""
    import torch

    from backends.model_artifact import pack_model_artifact
    from training.model import ModelConfig, build_model, save_model

    torch.manual_seed(0)
    names = [f"class_{i:03d}" for i in range(classes)]
    model_dir = folder / "model"
    save_model(build_model(architecture, classes), ModelConfig(architecture, names, image_size), str(model_dir))
    return model_dir, pack_model_artifact(model_dir, folder / "model.tar.gz")


def make_plain_artifact(folder: Path, model_dir: Path) -> Path:
    """The same model whose code/inference.py is bench/serving_baseline.py (with data.py and model.py)."""
    import shutil

    from backends.model_artifact import SERVING_CODE_FILES, TRAINING_SOURCE_DIR, pack_model_artifact

    plain = folder / "plain-model"
    shutil.copytree(model_dir, plain, ignore=shutil.ignore_patterns("code"))
    (plain / "code").mkdir()
    for name in SERVING_CODE_FILES:
        if name != "inference.py":
            shutil.copyfile(TRAINING_SOURCE_DIR / name, plain / "code" / name)
    shutil.copyfile(Path(__file__).with_name("serving_baseline.py"), plain / "code" / "inference.py")
    return pack_model_artifact(plain, folder / "plain-model.tar.gz")


# -- the gateway side --------------------------------------------------------------------------
def function_counters(gateway) -> dict:
    for fn in gateway.status().get("functions", []):
        if fn["name"] == FUNCTION_NAME:
            return {k: fn[k] for k in ("invocations", "cold_starts", "throttles", "errors", "environments")}
    return {}


def endpoint_threads(gateway) -> list[str]:
    """Each instance's torch threads, as the gateway gave them (OMP_NUM_THREADS in its environment)."""
    found = []
    for ep in gateway.status().get("endpoints", []):
        if ep["name"] != ENDPOINT_NAME:
            continue
        for inst in ep["instances"]:
            try:
                with open(f"/proc/{inst['pid']}/environ", "rb") as f:
                    env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
                found.append(env.get(b"OMP_NUM_THREADS", b"?").decode())
            except OSError:
                found.append("?")
    return found


# -- the run -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    from backends.local.gateway.client import GatewayClient
    from backends.local.gateway.server import ensure_gateway, stop_gateway
    from backends.local.state import LocalState
    from bench import serving_baseline
    from bench.serving_profile import stage_profile
    from training import inference

    body = make_photo_jpeg()
    photos = [make_photo_jpeg(seed) for seed in range(1, args.agreement + 1)]
    payload = json.dumps({"image": base64.b64encode(body).decode()})
    served_env = {"INFERENCE_GRAPH": args.graph, "INFERENCE_PRECISION": args.precision}
    results: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "request": {"width": PHOTO_SIZE[0], "height": PHOTO_SIZE[1], "jpeg_bytes": len(body),
                    "jpeg_quality": JPEG_QUALITY, "lambda_payload_bytes": len(payload)},
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "bf16_native": inference.bf16_is_native(torch.device("cpu"))},
    }
    print(f"request: {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG q{JPEG_QUALITY}, {len(body) / 1024:.1f} KiB "
          f"(Lambda payload {len(payload) / 1024:.1f} KiB as base64 JSON)", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp = Path(tmp)
        print(f"building an untrained {args.architecture} ({args.classes} classes, {args.image_size} px) ...",
              file=sys.stderr, flush=True)
        model_dir, artifact = make_model(tmp, args.architecture, args.image_size, args.classes)
        plain_artifact = make_plain_artifact(tmp, model_dir)
        plain = serving_baseline.model_fn(str(model_dir))
        t0 = time.perf_counter()
        with _environment(served_env):  # as the served endpoint's environment has them
            served = inference.model_fn(str(model_dir))
        results["served"] = {"graph": served.graph, "precision": served.precision,
                             "model_fn_s": time.perf_counter() - t0}
        results["machine"]["in_process_torch_threads"] = torch.get_num_threads()
        print(f"served form: {served.graph} {served.precision} (model_fn {results['served']['model_fn_s']:.1f} s)",
              file=sys.stderr, flush=True)

        state = LocalState.resolve(tmp / "state")
        gateway = None
        try:
            t0 = time.perf_counter()
            info = ensure_gateway(state)
            gateway = GatewayClient.of(info)
            print(f"gateway at {info.url} ({time.perf_counter() - t0:.1f} s); starting the endpoints "
                  f"({args.instances} instance(s) each) and the function ({LAMBDA_PROVISIONED} provisioned) ...",
                  file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            gateway.put_endpoint(ENDPOINT_NAME, str(artifact), instance_count=args.instances, environment=served_env)
            gateway.put_endpoint(PLAIN_ENDPOINT_NAME, str(plain_artifact), instance_count=args.instances)
            endpoint_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            gateway.put_function(FUNCTION_NAME, str(LAMBDA_SOURCE), environment={"ENDPOINT_NAME": ENDPOINT_NAME},
                                 timeout_s=max(30, int(args.read_timeout)), reserved_concurrency=LAMBDA_RESERVED,
                                 provisioned_concurrency=LAMBDA_PROVISIONED)
            function_s = time.perf_counter() - t0
            results["setup"] = {"endpoint_s": endpoint_s, "function_s": function_s,
                                "endpoint_instance_threads": endpoint_threads(gateway)}
            print(f"endpoints in service in {endpoint_s:.1f} s (torch threads per instance: "
                  f"{', '.join(results['setup']['endpoint_instance_threads'])}); function ready in {function_s:.1f} s",
                  file=sys.stderr, flush=True)
            makers = {
                "a0": lambda: plain_caller(plain, body),
                "a": lambda: in_process_caller(served, body),
                "b0": lambda: endpoint_caller(info.url, body, args.read_timeout, PLAIN_ENDPOINT_NAME),
                "b": lambda: endpoint_caller(info.url, body, args.read_timeout),
                "c": lambda: lambda_caller(info.url, payload, args.read_timeout),
            }
            results["agreement"] = top1_agreement(makers, photos)
            results["cells"], results["breakdown"] = run_all(args, makers, info.url, body, payload, gateway,
                                                             tmp / "noop-function")
            results["functions"] = function_counters(gateway)
        except Exception:
            traceback.print_exc()
            log = state.home / "gateway.log"
            if log.is_file():
                print(f"--- gateway.log (tail) ---\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            print("the benchmark could not run (see above)", file=sys.stderr)
            return 1
        finally:
            if gateway is not None:
                gateway.close()
            _stop(state, stop_gateway)
        if args.stages:
            print(f"  stage profile: {args.stages} requests per form ...", file=sys.stderr, flush=True)
            results["stages"] = stage_profile(plain, served, body, args.stages)

    results["total_s"] = time.perf_counter() - started
    report(args, results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"results written to {args.json}")
    return 0


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def top1_agreement(makers: dict, photos: list[bytes]) -> dict:
    """Per path, the share of `photos` whose best label is (a0)'s (the plain eager server's)."""
    if not photos:
        return {}
    best: dict[str, list[str]] = {}
    for path in ("a0", "a", "b0", "b"):
        call = makers[path]()
        best[path] = [call(photo)["predictions"][0]["label"] for photo in photos]
        if getattr(call, "client", None) is not None:
            call.client.close()
    print(f"  top-1 agreement on {len(photos)} photos: " + ", ".join(
        f"{p} {sum(x == y for x, y in zip(best[p], best['a0'])) / len(photos):.0%}" for p in best),
        file=sys.stderr, flush=True)
    return {p: sum(x == y for x, y in zip(labels, best["a0"])) / len(photos) for p, labels in best.items()} | {
        "photos": len(photos)}


def _stop(state, stop_gateway) -> None:
    """stop_gateway, reaping the gateway process meanwhile: it is this process's child (ensure_gateway
    started it), and stop_gateway waits until the pid is gone, which an unreaped zombie never is."""
    try:
        pid = json.loads((state.home / "gateway.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        pid = None

    def reap() -> None:
        try:
            os.waitpid(pid, 0)
        except (ChildProcessError, OSError):  # not our child (or already reaped): nothing to do
            pass

    if pid is not None:
        threading.Thread(target=reap, name="reap-gateway", daemon=True).start()
    began = time.perf_counter()
    stop_gateway(state)
    print(f"gateway stopped in {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)


def run_all(args, makers: dict, url: str, body: bytes, payload: str, gateway,
            noop_dir: Path) -> tuple[list[dict], dict | None]:
    paths = list(makers)
    # Per round and concurrency, every path in turn ((b) and (c) back to back at concurrency 1, for the hop);
    # each round measures its share of a cell's requests, and a cell is its rounds together.
    order = [(r, path, c) for r in range(args.rounds) for c in args.concurrency for path in paths]
    shares = [args.requests // args.rounds + (r < args.requests % args.rounds) for r in range(args.rounds)]
    wait_s = args.read_timeout + 30
    for path in paths:  # warm each path up before any timing
        call = makers[path]()
        for _ in range(args.warmup):
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - counted in the cells' warm-up errors, reported at the end
                print(f"    warm-up of {PATHS[path]} failed: {type(exc).__name__}: {exc}"[:400], file=sys.stderr)
                break
        if getattr(call, "client", None) is not None:
            call.client.close()
    parts: dict[tuple[str, int], list] = {}
    budget_end = time.perf_counter() + args.time_limit
    for index, (round_, path, concurrency) in enumerate(order):
        if not shares[round_]:
            continue
        now = time.perf_counter()
        deadline = now + max(1.0, (budget_end - now) / (len(order) - index))  # a fair share of what is left
        before = function_counters(gateway) if path == "c" else {}
        print(f"  round {round_ + 1}/{args.rounds}: {PATHS[path]}, concurrency {concurrency}: {shares[round_]} "
              "requests ...", file=sys.stderr, flush=True)
        cell = run_cell(path, makers[path], concurrency, shares[round_], deadline, wait_s)
        if path == "c":
            after = function_counters(gateway)
            cell.extra = {k: after.get(k, 0) - before.get(k, 0) for k in ("cold_starts", "throttles", "errors")}
        print(f"    {cell.requests} done, {cell.errors} errors, {cell.req_per_s:.2f} images/s, "
              f"p50 {_fmt(cell.p50_ms)} ms, p99 {_fmt(cell.p99_ms)} ms", file=sys.stderr, flush=True)
        parts.setdefault((path, concurrency), []).append(cell)
    cells = [asdict(merge_cells(parts[(path, c)])) for c in args.concurrency for path in paths if (path, c) in parts]
    breakdown = None
    if args.breakdown > 0:
        print(f"  Lambda hop breakdown: {args.breakdown} (b)/(c) pairs ...", file=sys.stderr, flush=True)
        try:
            breakdown = lambda_breakdown(url, gateway, noop_dir, body, payload, args.breakdown, args.read_timeout)
        except Exception as exc:  # noqa: BLE001 - a diagnostic, not a result
            breakdown = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return cells, breakdown


if __name__ == "__main__":
    sys.exit(main())
