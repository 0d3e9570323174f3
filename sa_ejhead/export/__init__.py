"""Deployment (docs/deploy.md): export to TorchScript and ONNX by tracing, run in onnxruntime,
check against the eager model. ``tools/deploy/export_model.py`` is the command line. onnx and
onnxruntime come with the ``deploy`` extra; TorchScript export needs neither.
"""

from .parity import (  # noqa: F401
    BOX_ATOL,
    MASK_IOU_MIN,
    SCORE_ATOL,
    check_parity,
    compare_instances,
    summarize_parity,
)
from .runtime import ExportedModel  # noqa: F401
from .tracing import DEFAULT_OPSET, MIN_OPSET, export_model, metadata_path  # noqa: F401
