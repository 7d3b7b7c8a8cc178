"""Train an image classifier under the SageMaker script-mode contract.

Runs unchanged in a SageMaker PyTorch training container, on an EC2 instance and under
the local backend: hyperparameters come as flags, paths from the SM_* environment.
Prints one `[metric]` line per epoch, then the restored best epoch and the test result.
On failure it writes the reason to $SM_OUTPUT_DIR/failure and exits non-zero.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

try:  # imported as the `training` package (tests, benchmarks)
    from . import data as data_lib
    from . import model as model_lib
    from .contract import HyperparameterError, SageMakerEnvironment, parse_args
except ImportError:  # run as a script from the job's code directory, as SageMaker does
    import data as data_lib
    import model as model_lib
    from contract import HyperparameterError, SageMakerEnvironment, parse_args

FEATURE_CACHE_BUDGET_BYTES = 2 * 1024**3


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    valid_loss: float
    valid_accuracy: float
    seconds: float
    images_per_second: float


@dataclass
class TrainingResult:
    history: list[EpochResult] = field(default_factory=list)
    best_epoch: int = 0
    test_loss: float = math.nan
    test_accuracy: float = math.nan
    train_images_seen: int = 0
    train_seconds: float = 0.0


def metric_line(**values) -> str:
    parts = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()]
    return "[metric] " + " ".join(parts)


class Trainer:
    """The training loop. With a frozen backbone and finite augmentation (none / flip),
    each (image, flip) goes through the backbone once: its features are cached and later
    epochs train the head on them; exactly what a fresh forward would give, because the
    frozen backbone runs in eval mode."""

    def __init__(self, args: argparse.Namespace, env: SageMakerEnvironment, log=print):
        self.args = args
        self.env = env
        self.log = log
        use_gpu = env.num_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        torch.manual_seed(args.seed)
        if not use_gpu:
            torch.set_num_threads(max(1, env.num_cpus))
        self.amp_dtype = self._amp_dtype(args.precision, use_gpu)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 and use_gpu else None
        self.splits = data_lib.scan_splits(env.training_dir)
        self.mean, self.std = model_lib.IMAGENET_MEAN, model_lib.IMAGENET_STD
        self.model = model_lib.build_model(args.architecture, len(self.splits.class_names), self._pretrained_state())
        if args.freeze_backbone and not self.env.pretrained_dir:
            log("warning: --freeze-backbone with no pretrained weights trains a head on random features; "
                "give a `pretrained` channel or use --freeze-backbone false")
        if args.freeze_backbone:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        self.channels_last = True
        self.model.to(self.device, memory_format=torch.channels_last)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=args.learning_rate)
        self.criterion = nn.CrossEntropyLoss()
        self.generator = torch.Generator().manual_seed(args.seed)
        self.datasets = {
            s.name: data_lib.ImageDataset(s, self.splits.root, args.image_size)
            for s in (self.splits.train, self.splits.valid, self.splits.test)
        }
        self.workers = self._workers(args.workers, use_gpu)
        self.cache = self._feature_cache()

    @staticmethod
    def _amp_dtype(precision: str, use_gpu: bool):
        if precision == "fp32" or (precision == "auto" and not use_gpu):
            return None
        if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16

    def _workers(self, requested: int, use_gpu: bool) -> int:
        if requested >= 0:
            return requested
        # On CPU the loader competes with the math for cores: one worker decodes ahead
        # while the others compute. On a GPU, decoding is the bottleneck.
        cpus = self.env.num_cpus
        return min(8, max(1, cpus - 1)) if use_gpu else (1 if cpus >= 2 else 0)

    def _pretrained_state(self):
        if not self.env.pretrained_dir:
            if self.args.pretrained_file:
                raise HyperparameterError("--pretrained-file given but there is no `pretrained` channel")
            return None
        folder = self.env.pretrained_dir
        names = [self.args.pretrained_file] if self.args.pretrained_file else sorted(
            f for f in os.listdir(folder) if f.endswith((".pth", ".pt", ".bin")))
        if len(names) != 1:
            raise HyperparameterError(
                f"the pretrained channel must hold exactly one .pth/.pt file or name one with --pretrained-file; "
                f"found {names or 'none'}")
        path = os.path.join(folder, names[0])
        if not os.path.isfile(path):
            raise HyperparameterError(f"pretrained file {names[0]} not found in the pretrained channel")
        self.log(f"loading pretrained weights from {names[0]}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state

    def _feature_cache(self):
        if not self.args.freeze_backbone or self.args.augmentation == "crop_flip":
            return None
        variants = 2 if self.args.augmentation == "flip" else 1
        n = len(self.splits.train) * variants + len(self.splits.valid) + len(self.splits.test)
        if n * self.model.feature_dim * 4 > FEATURE_CACHE_BUDGET_BYTES:
            self.log("feature cache would exceed its memory budget; computing features every epoch")
            return None
        return {}  # (split, index, flip) -> feature row (CPU tensor)

    # -- running the backbone -------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loader(self, split: str, keys: list) -> DataLoader:
        return DataLoader(
            self.datasets[split], batch_size=self.args.batch_size, sampler=keys, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if self.workers else None,
        )

    def _images(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        return data_lib.normalize_batch(batch_uint8, self.mean, self.std, self.device, self.channels_last)

    def _frozen_features(self, split: str, keys: list) -> dict:
        """Features for `keys`, computing (once) the ones not cached yet."""
        missing = [k for k in dict.fromkeys(keys) if (split, k[0], k[1]) not in self.cache]
        if missing:
            self.model.backbone.eval()
            # no_grad, not inference_mode: cached rows are later inputs of the head's autograd graph
            with torch.no_grad(), self._autocast():
                for images, _, indices, flips in self._loader(split, missing):
                    feats = self.model.features(self._images(images)).float().cpu()
                    for row, i, f in zip(feats, indices.tolist(), flips.tolist()):
                        self.cache[(split, i, f)] = row
        return self.cache

    # -- epochs -----------------------------------------------------------------
    def _train_epoch(self, keys: list) -> tuple[float, float]:
        self.model.head.train()
        if not self.args.freeze_backbone:
            self.model.backbone.train()
        total_loss, correct, seen = 0.0, 0, 0
        labels_all = self.splits.train.labels
        if self.cache is not None:
            cache = self._frozen_features("train", keys)
            for start in range(0, len(keys), self.args.batch_size):
                chunk = keys[start:start + self.args.batch_size]
                feats = torch.stack([cache[("train", i, f)] for i, f, _ in chunk]).to(self.device)
                labels = torch.tensor([labels_all[i] for i, _, _ in chunk], device=self.device)
                total_loss, correct, seen = self._step(lambda: self.model.head(feats), labels, total_loss, correct, seen)
        else:
            for images, labels, _, _ in self._loader("train", keys):
                labels = labels.to(self.device, non_blocking=True)
                images = self._images(images)
                if self.args.freeze_backbone:
                    self.model.backbone.eval()
                    with torch.no_grad(), self._autocast():
                        feats = self.model.features(images).float()
                    forward = lambda: self.model.head(feats)  # noqa: E731
                else:
                    forward = lambda: self.model(images)  # noqa: E731
                total_loss, correct, seen = self._step(forward, labels, total_loss, correct, seen)
        return total_loss / max(seen, 1), correct / max(seen, 1)

    def _step(self, forward, labels, total_loss, correct, seen):
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = forward()
            loss = self.criterion(logits.float(), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} (learning rate {self.args.learning_rate} too high?)")
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        n = labels.numel()
        return total_loss + loss.item() * n, correct + (logits.argmax(1) == labels).sum().item(), seen + n

    def evaluate(self, split: str) -> tuple[float, float]:
        keys = data_lib.epoch_plan(len(self.datasets[split]), "none", self.generator, shuffle=False)
        labels_all = self.datasets[split].split.labels
        self.model.eval()
        total_loss, correct = 0.0, 0
        with torch.inference_mode(), self._autocast():
            if self.cache is not None:
                cache = self._frozen_features(split, keys)
                for start in range(0, len(keys), self.args.batch_size):
                    chunk = keys[start:start + self.args.batch_size]
                    feats = torch.stack([cache[(split, i, f)] for i, f, _ in chunk]).to(self.device)
                    labels = torch.tensor([labels_all[i] for i, _, _ in chunk], device=self.device)
                    logits = self.model.head(feats).float()
                    total_loss += self.criterion(logits, labels).item() * labels.numel()
                    correct += (logits.argmax(1) == labels).sum().item()
            else:
                for images, labels, _, _ in self._loader(split, keys):
                    labels = labels.to(self.device)
                    logits = self.model(self._images(images)).float()
                    total_loss += self.criterion(logits, labels).item() * labels.numel()
                    correct += (logits.argmax(1) == labels).sum().item()
        n = max(len(keys), 1)
        return total_loss / n, correct / n

    def fit(self) -> TrainingResult:
        args, result = self.args, TrainingResult()
        self.log(
            f"training {args.architecture} on {len(self.splits.train)} images, {len(self.splits.class_names)} classes; "
            f"device={self.device.type} threads={torch.get_num_threads()} workers={self.workers} "
            f"precision={self.amp_dtype or 'fp32'} feature_cache={'on' if self.cache is not None else 'off'}")
        best_loss, best_state, stale = math.inf, None, 0
        for epoch in range(1, args.epochs + 1):
            started = time.perf_counter()
            keys = data_lib.epoch_plan(len(self.splits.train), args.augmentation, self.generator)
            train_loss, train_acc = self._train_epoch(keys)
            valid_loss, valid_acc = self.evaluate("valid")
            seconds = time.perf_counter() - started
            epoch_result = EpochResult(epoch, train_loss, train_acc, valid_loss, valid_acc, seconds, len(keys) / seconds)
            result.history.append(epoch_result)
            result.train_images_seen += len(keys)
            result.train_seconds += seconds
            self.log(metric_line(epoch=epoch, train_loss=train_loss, train_accuracy=train_acc, valid_loss=valid_loss,
                                 valid_accuracy=valid_acc, epoch_seconds=seconds,
                                 images_per_second=epoch_result.images_per_second))
            if valid_loss < best_loss:
                best_loss, stale, result.best_epoch = valid_loss, 0, epoch
                best_state = copy.deepcopy(self.model.head.state_dict() if args.freeze_backbone else self.model.state_dict())
            else:
                stale += 1
                if args.early_stopping_patience and stale >= args.early_stopping_patience:
                    self.log(f"early stopping: validation loss has not improved for {stale} epochs")
                    break
        if best_state is not None:
            (self.model.head if args.freeze_backbone else self.model).load_state_dict(best_state)
        else:  # validation loss was never finite: keep the last epoch, and say so
            result.best_epoch = len(result.history)
            self.log("warning: validation loss was never finite; keeping the last epoch's model")
        best = result.history[result.best_epoch - 1]
        # Printed last so that a metric's final value is the restored model's (what SageMaker tuning reads).
        self.log(metric_line(best_epoch=best.epoch, valid_loss=best.valid_loss, valid_accuracy=best.valid_accuracy))
        result.test_loss, result.test_accuracy = self.evaluate("test")
        self.log(metric_line(test_loss=result.test_loss, test_accuracy=result.test_accuracy))
        return result

    def save(self, result: TrainingResult, hyperparameters: dict[str, str]) -> None:
        best = result.history[result.best_epoch - 1]
        config = model_lib.ModelConfig(
            architecture=self.args.architecture, class_names=self.splits.class_names, image_size=self.args.image_size,
            mean=self.mean, std=self.std,
            metrics={"valid_loss": best.valid_loss, "valid_accuracy": best.valid_accuracy,
                     "test_loss": result.test_loss, "test_accuracy": result.test_accuracy},
            hyperparameters=hyperparameters,
        )
        self.model.to("cpu", memory_format=torch.contiguous_format)
        model_lib.save_model(self.model, config, self.env.model_dir)
        copy_serving_code(self.env.model_dir)
        os.makedirs(self.env.output_data_dir, exist_ok=True)
        with open(os.path.join(self.env.output_data_dir, "history.json"), "w") as f:
            json.dump({"epochs": [e.__dict__ for e in result.history], "best_epoch": result.best_epoch,
                       "test_loss": result.test_loss, "test_accuracy": result.test_accuracy}, f, indent=2)


SERVING_CODE_FILES = ("inference.py", "model.py", "data.py")


def copy_serving_code(model_dir: str) -> None:
    """Put the serving code beside the weights (model/code/), so the model.tar.gz that SageMaker,
    an EC2 instance or the local backend packs from the model folder is servable as it is."""
    here = os.path.dirname(os.path.abspath(__file__))
    code_dir = os.path.join(model_dir, "code")
    os.makedirs(code_dir, exist_ok=True)
    for name in SERVING_CODE_FILES:
        shutil.copyfile(os.path.join(here, name), os.path.join(code_dir, name))


def failure_reason(exc: BaseException) -> str:
    message = str(exc).strip()
    if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the worker's own error
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    if isinstance(exc, (HyperparameterError, data_lib.DataError, model_lib.ModelError, FloatingPointError)):
        return message
    return f"{type(exc).__name__}: {message}"


def write_failure(output_dir: str, reason: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "failure"), "w") as f:
        f.write(reason + "\n")


def main(argv: list[str] | None = None) -> int:
    env = SageMakerEnvironment.from_env()
    try:
        args = parse_args(argv)
        hyperparameters = {k.replace("_", "-"): str(v) for k, v in vars(args).items()}
        trainer = Trainer(args, env, log=lambda line: print(line, flush=True))
        result = trainer.fit()
        trainer.save(result, hyperparameters)
        return 0
    except (KeyboardInterrupt, Exception) as exc:
        reason = failure_reason(exc)
        write_failure(env.output_dir, reason)
        if not isinstance(exc, (HyperparameterError, data_lib.DataError, model_lib.ModelError)):
            traceback.print_exc()
        print(f"training failed: {reason}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
