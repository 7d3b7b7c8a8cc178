"""The SageMaker script-mode contract: hyperparameters as command-line flags, paths and
resources from the SM_* environment. Shipped with train.py; imports stdlib and torch only."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch

AUGMENTATIONS = ("none", "flip", "crop_flip")


class HyperparameterError(ValueError):
    pass


def str_to_bool(value: str) -> bool:
    # SageMaker passes every hyperparameter as a string: "True", "false", "1" ...
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _bounded(kind, low=None, high=None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high) or value != value:
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, {high}]")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a bad hyperparameter is a failure reason, not a usage dump
        raise HyperparameterError(f"invalid hyperparameters: {message}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(description=__doc__)
    p.add_argument("--learning-rate", "--learning_rate", "--lr", type=_bounded(float, 1e-8, 10.0), default=1e-3)
    p.add_argument("--batch-size", "--batch_size", type=_bounded(int, 1, 65536), default=64)
    p.add_argument("--epochs", type=_bounded(int, 1, 10000), default=3)
    p.add_argument("--early-stopping-patience", "--patience", type=_bounded(int, 0, 10000), default=3,
                   help="stop after this many epochs without a lower validation loss (0: never stop early)")
    p.add_argument("--architecture", default="resnet50", help="any torchvision classification model name")
    p.add_argument("--image-size", "--image_size", type=_bounded(int, 16, 1024), default=224)
    p.add_argument("--freeze-backbone", "--freeze_backbone", type=str_to_bool, default=True)
    p.add_argument("--augmentation", choices=AUGMENTATIONS, default="flip")
    p.add_argument("--pretrained-file", default="", help="file name inside the `pretrained` channel")
    p.add_argument("--seed", type=_bounded(int, 0, 2**31 - 1), default=0)
    p.add_argument("--workers", type=_bounded(int, -1, 64), default=-1, help="data-loader workers (-1: choose)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: mixed precision on a GPU, fp32 on CPU")
    return p.parse_args(argv)


@dataclass
class SageMakerEnvironment:
    """The paths and resources SageMaker gives a training container."""

    training_dir: str
    model_dir: str
    output_dir: str
    output_data_dir: str
    pretrained_dir: str | None
    num_gpus: int
    num_cpus: int

    @classmethod
    def from_env(cls, environ=os.environ) -> "SageMakerEnvironment":
        base = "/opt/ml"
        output_dir = environ.get("SM_OUTPUT_DIR", f"{base}/output")
        return cls(
            training_dir=environ.get("SM_CHANNEL_TRAINING", f"{base}/input/data/training"),
            model_dir=environ.get("SM_MODEL_DIR", f"{base}/model"),
            output_dir=output_dir,
            output_data_dir=environ.get("SM_OUTPUT_DATA_DIR", os.path.join(output_dir, "data")),
            pretrained_dir=environ.get("SM_CHANNEL_PRETRAINED"),
            num_gpus=int(environ.get("SM_NUM_GPUS", torch.cuda.device_count())),
            num_cpus=int(environ.get("SM_NUM_CPUS", os.cpu_count() or 1)),
        )
