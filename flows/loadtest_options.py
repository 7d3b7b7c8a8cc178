"""The options of `sagemaker-flows loadtest` and the LoadTestSettings they make (light to import: the
command's parser is built on every run of the CLI)."""
from __future__ import annotations

import argparse
import re


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `sagemaker-flows loadtest` options (besides the configuration's)."""
    parser.add_argument("--target", choices=("endpoint", "function"), default="endpoint",
                        help="endpoint: raw images through the SageMaker Runtime API; function: through Lambda")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--rates", help="requests per second of each step, e.g. 2,4,8 (the default)")
    load.add_argument("--ramp", metavar="FROM:TO", help="a linear ramp of requests per second instead, e.g. 1:20")
    parser.add_argument("--seconds", type=float, help="how long the ramp lasts (default 120)")
    parser.add_argument("--step-seconds", type=float, help="each step's length (default 30)")
    parser.add_argument("--idle-seconds", type=float, help="quiet after the load while the last answers come back "
                                                           "(default 0); without traffic nothing scales in, as on AWS: "
                                                           "end on a low rate to watch a scale-in")
    parser.add_argument("--max-requests", type=int, help="send no more than this many (default 20000)")
    parser.add_argument("--max-seconds", type=float, help="stop sending after this long (default 900)")
    parser.add_argument("--max-in-flight", type=int, help="requests awaiting an answer at most; more are dropped "
                                                          "(default 32)")
    parser.add_argument("--images", metavar="DIR|s3://PREFIX",
                        help="the images to send (default: the test split of data.source; of an s3:// source, "
                             "50 images spread over its test/)")
    parser.add_argument("--time-scale", type=float, help="local backend: run the autoscaling policy's minutes and "
                                                         "cooldowns this many times faster during the test (default 1)")
    parser.add_argument("--p95-ms", type=float, help="the latency objective (default 500)")
    parser.add_argument("--peak-rps", type=float,
                        help="with --recommend: the peak rate to size autoscaling.max_capacity for, and, with "
                             "--target function, provisioned concurrency (only a test of the function sizes it)")
    parser.add_argument("--recommend", action="store_true",
                        help="print the settings the test supports as --set overrides, with their monthly cost")
    parser.add_argument("--json", action="store_true", help="one JSON document, for scripts")


# LoadTestSettings' fields and the options that set them.
OPTIONS = {"target": "--target", "rates": "--rates", "ramp": "--ramp", "ramp_seconds": "--seconds",
           "step_seconds": "--step-seconds", "idle_seconds": "--idle-seconds", "max_requests": "--max-requests",
           "max_seconds": "--max-seconds", "max_in_flight": "--max-in-flight", "images": "--images",
           "time_scale": "--time-scale", "p95_ms": "--p95-ms", "peak_rps": "--peak-rps"}


def _numbers(text: str, option: str, separator: str) -> list[float]:
    try:
        return [float(part) for part in text.split(separator)]
    except ValueError:
        raise ValueError(f"{option} takes numbers separated by {separator!r}, not {text!r}") from None


def settings_from_arguments(args: argparse.Namespace):
    """The LoadTestSettings the options ask for; ValueError naming the option otherwise."""
    from pydantic import ValidationError

    from core.config_io import format_validation_error
    from core.loadtest import LoadTestSettings

    values = {"target": args.target, "images": args.images}
    if args.rates:
        values["rates"] = _numbers(args.rates, "--rates", ",")
    if args.ramp:
        ramp = _numbers(args.ramp, "--ramp", ":")
        if len(ramp) != 2:
            raise ValueError(f"--ramp takes FROM:TO, not {args.ramp!r}")
        values["ramp"] = tuple(ramp)
    elif args.seconds is not None:
        raise ValueError("--seconds is the length of a --ramp")
    for field, option in OPTIONS.items():
        value = getattr(args, option.removeprefix("--").replace("-", "_"))
        if value is not None and field not in ("rates", "ramp", "target", "images"):
            values[field] = value
    try:
        return LoadTestSettings.model_validate(values)
    except ValidationError as exc:
        text = format_validation_error(exc)
        for field, option in OPTIONS.items():  # each error starts with the field's name
            text = re.sub(rf"(^|; ){field}(?=[ .])", rf"\g<1>{option}", text)
        raise ValueError(f"loadtest: {text}") from None
