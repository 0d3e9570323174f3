"""Evaluation: Detectron2's COCOEvaluator with faster-coco-eval when installed."""

from .fast_coco import (  # noqa: F401
    FASTER_COCO_EVAL_AVAILABLE,
    COCOEvaluator,
    FasterCOCOeval,
    evaluate_coco_results,
    get_cocoeval_class,
)
from .synthetic import make_synthetic_coco  # noqa: F401
from .timing import time_coco_eval  # noqa: F401
