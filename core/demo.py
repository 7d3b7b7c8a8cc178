"""The demo pipeline's configuration: small, fast and accurate on the digits dataset."""
from __future__ import annotations

from core.config import PipelineConfig

# A small network trained end to end (no pretrained weights are available offline), on 32 px
# digits without flips (a flipped digit is another glyph). Three epochs reach >= 0.90 test accuracy.
DEMO_SETTINGS = {
    "project": "sagemaker-flows",
    "stage": "demo",
    "training": {
        "mode": "tuning",
        "architecture": "resnet18",
        "image_size": 32,
        "epochs": 3,
        "freeze_backbone": False,
        "augmentation": "none",
        "hyperparameters": {"learning_rate": 0.001, "batch_size": 32},
        "tuning": {
            "strategy": "Bayesian",
            "max_jobs": 4,
            "max_parallel_jobs": 2,
            "objective": {"metric": "valid_loss", "type": "Minimize"},
            "parameter_ranges": {
                "continuous": [{"name": "learning-rate", "min_value": 0.0003, "max_value": 0.003,
                                "scaling_type": "Logarithmic"}],
                "categorical": [{"name": "batch-size", "values": ["32", "64"]}],
            },
        },
    },
    "autoscaling": {"min_capacity": 1, "max_capacity": 4, "target_invocations_per_instance": 10.0},
    "function": {"reserved_concurrency": 10, "provisioned_concurrency": 2},
}


def demo_config(data_dir: str, **overrides) -> PipelineConfig:
    values = {**DEMO_SETTINGS, "data": {"source": data_dir}, **overrides}
    return PipelineConfig.model_validate(values)
