"""The classifier: any torchvision classification model with the seed's head.

Shipped as source into training jobs and endpoints; imports torch/torchvision only.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_HIDDEN_UNITS = 128  # the seed's hpo.py head: Linear(in, 128) -> ReLU -> Linear(128, classes)
WEIGHTS_FILE = "model.pth"
CONFIG_FILE = "model_config.json"


class ModelError(ValueError):
    """A model cannot be built or loaded as asked; the message says why."""


@dataclass
class ModelConfig:
    """What an endpoint needs to rebuild the model and prepare its input (model_config.json)."""

    architecture: str
    class_names: list[str]
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    head_hidden_units: int = HEAD_HIDDEN_UNITS
    metrics: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, str] = field(default_factory=dict)

    def save(self, model_dir: str) -> str:
        path = os.path.join(model_dir, CONFIG_FILE)
        payload = asdict(self)
        payload["normalization"] = {"mean": list(self.mean), "std": list(self.std)}
        payload.pop("mean")
        payload.pop("std")
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
        return path

    @classmethod
    def load(cls, model_dir: str) -> "ModelConfig":
        path = os.path.join(model_dir, CONFIG_FILE)
        try:
            with open(path) as f:
                payload = json.load(f)
        except FileNotFoundError:
            raise ModelError(f"{CONFIG_FILE} not found in {model_dir}") from None
        norm = payload.pop("normalization", {})
        return cls(mean=tuple(norm.get("mean", IMAGENET_MEAN)), std=tuple(norm.get("std", IMAGENET_STD)), **payload)


class FeatureClassifier(nn.Module):
    """A torchvision backbone with its last Linear layer removed, and a new head.

    Keeping the two apart lets training run the frozen backbone once per image
    (in eval mode, without autograd) and train only the head.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_dim = feature_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        out = self.backbone(images)
        if isinstance(out, tuple):  # googlenet/inception return (logits, aux...) in train mode
            out = out[0]
        return torch.flatten(out, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def classification_architectures() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name:
            found = name, module
    if found is None:
        raise ModelError(f"{type(model).__name__} has no Linear classifier layer to replace")
    name, linear = found
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return parent, name.rsplit(".", 1)[-1], linear


def build_model(
    architecture: str,
    num_classes: int,
    pretrained_state: dict[str, torch.Tensor] | None = None,
    hidden_units: int = HEAD_HIDDEN_UNITS,
) -> FeatureClassifier:
    """Build `architecture` (a torchvision classification model name) with a new head.

    Weights are never downloaded: `pretrained_state` is a state dict the user gave.
    """
    import torchvision

    available = classification_architectures()
    if architecture not in available:
        raise ModelError(
            f"unknown architecture {architecture!r}: expected a torchvision classification model, "
            f"one of {', '.join(available)}"
        )
    if num_classes < 2:
        raise ModelError(f"a classifier needs at least 2 classes, found {num_classes}")
    kwargs = {"aux_logits": False, "init_weights": True} if architecture in ("googlenet", "inception_v3") else {}
    base = torchvision.models.get_model(architecture, weights=None, **kwargs)
    if pretrained_state is not None:
        _load_pretrained(base, pretrained_state, architecture)
    parent, attr, linear = _last_linear(base)
    setattr(parent, attr, nn.Identity())
    head = nn.Sequential(
        nn.Linear(linear.in_features, hidden_units),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_units, num_classes),
    )
    return FeatureClassifier(base, head, linear.in_features)


def _load_pretrained(base: nn.Module, state: dict[str, torch.Tensor], architecture: str) -> None:
    # Accept a plain torchvision state dict, or one saved from a FeatureClassifier's backbone.
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("head.")}
    own = base.state_dict()
    _, _, linear = _last_linear(base)
    classifier_keys = {k for k, v in base.named_parameters() if any(v is p for p in linear.parameters())}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape and k not in classifier_keys]
    missing = [k for k in own if k not in state and k not in classifier_keys]
    if mismatched or missing or not state:
        detail = f"missing {missing[:3]}" if missing else f"shape mismatch at {mismatched[:3]}"
        raise ModelError(f"pretrained weights do not fit {architecture}: {detail}")
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    base.load_state_dict(usable, strict=False)


def load_model(model_dir: str, map_location: str | torch.device = "cpu") -> tuple[FeatureClassifier, ModelConfig]:
    """Rebuild a trained model from `model_dir` (weights + model_config.json)."""
    config = ModelConfig.load(model_dir)
    model = build_model(config.architecture, len(config.class_names), hidden_units=config.head_hidden_units)
    path = os.path.join(model_dir, WEIGHTS_FILE)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{WEIGHTS_FILE} not found in {model_dir}") from None
    model.load_state_dict(state)
    model.eval()
    return model, config


def save_model(model: FeatureClassifier, config: ModelConfig, model_dir: str) -> None:
    os.makedirs(model_dir, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(model_dir, WEIGHTS_FILE))
    config.save(model_dir)
