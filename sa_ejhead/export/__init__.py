"""Deployment (docs/deploy.md): export to TorchScript and ONNX by tracing, run in onnxruntime,
check, measure. ``tools/deploy/export_model.py`` is the command line (:mod:`.cli`). onnx and
onnxruntime come with the ``deploy`` extra; TorchScript export needs neither.
"""

from sa_ejhead.analysis.report import format_deploy_table

from .measure import (
    RUNTIMES,
    check_parity,
    export_formats,
    limit_nms_candidates,
    measure_deploy,
    measure_deploy_configs,
    measure_deploy_many,
)
from .parity import (
    BOX_ATOL,
    MASK_IOU_MIN,
    SCORE_ATOL,
    compare_instances,
    condition_random_heads,
    summarize_parity,
)
from .runtime import ExportedModel, onnxruntime_session, paste_masks_numpy, postprocess_numpy
from .tracing import (
    DEFAULT_OPSET,
    EXPORT_FORMATS,
    MIN_OPSET,
    export_model,
    exported_path,
    library_versions,
    metadata_path,
    traceable_inference,
)

__all__ = [
    "BOX_ATOL",
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "MASK_IOU_MIN",
    "MIN_OPSET",
    "RUNTIMES",
    "SCORE_ATOL",
    "ExportedModel",
    "check_parity",
    "compare_instances",
    "condition_random_heads",
    "export_formats",
    "export_model",
    "format_deploy_table",
    "exported_path",
    "library_versions",
    "limit_nms_candidates",
    "measure_deploy",
    "measure_deploy_configs",
    "measure_deploy_many",
    "metadata_path",
    "onnxruntime_session",
    "paste_masks_numpy",
    "postprocess_numpy",
    "summarize_parity",
    "traceable_inference",
]
