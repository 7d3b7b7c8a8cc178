"""Where an in-process request's time goes, and which form of the forward is fastest.

stage_profile (bench/serving.py prints it after its table): one 500x375 JPEG request, batch 1, timed stage
by stage through training/inference.py's own steps, with the plain eager model's forward and with the
served form's; and each server's whole request (bench/serving_baseline.py's handle, inference.handle).

Run as a script, it compares forms of the forward alone at batch 1 (random weights, random input): each
form in its own process (oneDNN Graph fusion is process-wide) against eager in the same process, in
interleaved rounds so that a change in the machine's load falls on both alike:

  eager          the model as trained (torchvision, fp32)
  channels-last  eager with the model and input in channels-last memory format
  torchscript    what training/inference.py serves: traced, frozen, fused by oneDNN Graph
  ts-optimized   traced, frozen and torch.jit.optimize_for_inference (MKLDNN layouts), no oneDNN Graph
  compile        torch.compile with inductor's freezing (needs a C++ compiler at run time)
  bf16           eager under CPU bf16 autocast (emulated, and many times slower, without AVX-512/AMX)

    .venv/bin/python bench/serving_profile.py                       # resnet50 at 224 px, all but compile
    .venv/bin/python bench/serving_profile.py --forms eager,compile  # compile takes ~1 minute on 2 cores
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

FORMS = ("eager", "channels-last", "torchscript", "ts-optimized", "compile", "bf16")
STAGES = ("open (header, size checks)", "decode, resize, to uint8", "normalize", "forward",
          "softmax, top-k, JSON")


# -- stages of one request -----------------------------------------------------------------------
def stage_profile(plain, served, body: bytes, n: int) -> dict:
    """Median ms per stage (and per whole request) of `n` requests, plain and served interleaved."""
    import torch

    from bench import serving_baseline
    from training import data as data_lib
    from training import inference

    config = served.config
    times = {form: {stage: [] for stage in STAGES + ("whole request",)} for form in ("plain", "served")}

    def stages(form: str, forward) -> None:
        t = times[form]
        began = time.perf_counter()
        batch = inference.parse_request(body, "image/jpeg")
        opened = time.perf_counter()
        pixels = torch.stack([inference._prepare(batch.images[0], config.image_size, "the image")])
        prepared = time.perf_counter()
        with torch.inference_mode():
            inputs = data_lib.normalize_batch(pixels, config.mean, config.std, served.device, channels_last=False)
            normalized = time.perf_counter()
            logits = forward(inputs)
            forwarded = time.perf_counter()
            scores, indices = torch.softmax(logits.float(), dim=1).topk(served.top_k, dim=1)
        prediction = inference.Prediction(
            [[{"label": config.class_names[i], "score": s} for s, i in zip(scores[0].tolist(), indices[0].tolist())]],
            False, served.model_version)
        inference.format_response(prediction, None)
        done = time.perf_counter()
        for stage, (a, b) in zip(STAGES, ((began, opened), (opened, prepared), (prepared, normalized),
                                          (normalized, forwarded), (forwarded, done))):
            t[stage].append((b - a) * 1000)

    def whole(form: str, call) -> None:
        began = time.perf_counter()
        call()
        times[form]["whole request"].append((time.perf_counter() - began) * 1000)

    for _ in range(2):  # warm both up
        stages("plain", plain.model)
        stages("served", served.model)
    for _ in range(n):
        stages("plain", plain.model)
        stages("served", served.model)
        whole("plain", lambda: serving_baseline.handle(body, plain))
        whole("served", lambda: inference.handle(body, "image/jpeg", None, served))
    return {form: {stage: statistics.median(v) for stage, v in by_stage.items()} for form, by_stage in times.items()}


def print_stage_profile(profile: dict, served_form: str) -> None:
    plain, served = profile["plain"], profile["served"]
    print(f"| stage (batch 1, in-process; medians) | plain eager ms | served ({served_form}) ms |")
    print("|---|---:|---:|")
    for stage in STAGES:
        print(f"| {stage} | {plain[stage]:.2f} | {served[stage]:.2f} |")
    outside = {form: profile[form]["whole request"] - profile[form]["forward"] for form in profile}
    print(f"| whole request (its server's handle) | {plain['whole request']:.1f} | {served['whole request']:.1f} |")
    print(f"| whole request minus forward | {outside['plain']:.1f} | {outside['served']:.1f} |")


# -- forms of the forward ------------------------------------------------------------------------
def build(form: str, model, example):
    import torch

    from training import inference

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if form == "eager":
            return model
        if form == "channels-last":
            cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
            return lambda x: cl(x.contiguous(memory_format=torch.channels_last))
        if form == "torchscript":
            return inference._torchscript(copy.deepcopy(model), example)
        if form == "ts-optimized":
            return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(copy.deepcopy(model), example)))
        if form == "compile":
            return torch.compile(copy.deepcopy(model), options={"freezing": True})
        if form == "bf16":
            return inference.Autocast(model, "cpu")
    raise ValueError(form)


def compare_to_eager(args, form: str) -> dict:
    """Eager and `form` in this process: build seconds, answers against eager's, interleaved timings."""
    import torch

    from training.model import build_model

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.architecture, args.classes).eval()
    example = torch.randn(1, 3, args.image_size, args.image_size)
    checks = torch.randn(args.checks, 1, 3, args.image_size, args.image_size)
    with torch.inference_mode():
        want = [model(x) for x in checks]
    began = time.perf_counter()
    forward = build(form, model, example)
    with torch.inference_mode():
        for _ in range(3):  # profiling runs, fusion, compilation, first-call allocations
            forward(example)
        got = [forward(x).float() for x in checks]
    row = {"build_s": time.perf_counter() - began, "threads": torch.get_num_threads(),
           "max_abs_diff": max((g - w).abs().max().item() for g, w in zip(got, want)),
           "top1_agreement": sum(bool(torch.equal(g.argmax(1), w.argmax(1))) for g, w in zip(got, want)) / len(want),
           "eager_ms": [], "form_ms": []}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for key, fn in (("eager_ms", model), ("form_ms", forward)):
                for _ in range(args.per_round):
                    began = time.perf_counter()
                    fn(example)
                    row[key].append((time.perf_counter() - began) * 1000)
    return row


def print_forms(args, rows: dict) -> None:
    threads = next(iter(rows.values()))["threads"] if rows else "?"
    print(f"\nForward only, {args.architecture} at {args.image_size} px, batch 1, {threads} torch threads; each form "
          f"in its own process against eager there, {args.rounds} interleaved rounds x {args.per_round} calls; "
          f"answers compared on {args.checks} random inputs")
    print("| form | its ms (median / min) | eager ms there (median / min) | speed-up (median) | build + warm-up s "
          "| max abs diff | top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for form, row in rows.items():
        if "error" in row:
            print(f"| {form} | failed: {row['error']} | | | | | |")
            continue
        f, e = row["form_ms"], row["eager_ms"]
        print(f"| {form} | {statistics.median(f):.1f} / {min(f):.1f} | {statistics.median(e):.1f} / {min(e):.1f} | "
              f"{statistics.median(e) / statistics.median(f):.2f}x | {row['build_s']:.1f} | "
              f"{row['max_abs_diff']:.2g} | {row['top1_agreement']:.0%} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--architecture", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--classes", type=int, default=133)
    p.add_argument("--forms", default="channels-last,torchscript,ts-optimized,bf16",
                   help=f"comma-separated, of {', '.join(FORMS[1:])}")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--per-round", type=int, default=3)
    p.add_argument("--checks", type=int, default=8, help="random inputs the forms' answers are compared on")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # in a child: measure this form, print JSON
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(compare_to_eager(args, args.one)))
        return 0
    forms = [f.strip() for f in args.forms.split(",") if f.strip() and f.strip() != "eager"]
    unknown = set(forms) - set(FORMS)
    if unknown:
        p.error(f"unknown forms {sorted(unknown)}; choose from {', '.join(FORMS[1:])}")
    own = [a for a in (argv if argv is not None else sys.argv[1:])]
    rows = {}
    for form in forms:
        print(f"  {form} against eager ...", file=sys.stderr, flush=True)
        child = subprocess.run([sys.executable, __file__, *own, "--one", form], capture_output=True, text=True)
        try:
            rows[form] = json.loads(child.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            rows[form] = {"error": (child.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print_forms(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
