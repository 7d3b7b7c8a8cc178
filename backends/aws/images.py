"""The SageMaker PyTorch deep learning container images that train and serve our models.

The URIs come from the sagemaker SDK's bundled image configuration
(sagemaker/core/image_uri_config/pytorch.json), so they resolve offline. The versions below
are the newest the installed SDK lists for each scope: training images go further than
inference images. A model trained on the newer framework still loads on the older one
because training/train.py saves a plain state dict (torch.save's zip format).
Graviton hosting types (ml.c7g ...) get the arm64 inference image: the SDK picks that scope.
"""
from __future__ import annotations

from functools import lru_cache

FRAMEWORK = "pytorch"
TRAINING_FRAMEWORK_VERSION = "2.10.0"
TRAINING_PY_VERSION = "py313"
INFERENCE_FRAMEWORK_VERSION = "2.6.0"
INFERENCE_PY_VERSION = "py312"


@lru_cache(maxsize=64)
def _retrieve(scope: str, region: str, instance_type: str, version: str, py_version: str) -> str:
    from sagemaker.core import image_uris  # slow import (~2 s): only when an image is needed

    return image_uris.retrieve(FRAMEWORK, region=region, version=version, py_version=py_version,
                               instance_type=instance_type, image_scope=scope)


def training_image_uri(region: str, instance_type: str) -> str:
    """ECR URI of the PyTorch training image for `instance_type` (cpu or gpu) in `region`."""
    return _retrieve("training", region, instance_type, TRAINING_FRAMEWORK_VERSION, TRAINING_PY_VERSION)


def inference_image_uri(region: str, instance_type: str) -> str:
    """ECR URI of the PyTorch inference image for `instance_type` in `region`."""
    return _retrieve("inference", region, instance_type, INFERENCE_FRAMEWORK_VERSION, INFERENCE_PY_VERSION)
