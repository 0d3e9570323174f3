"""Evaluation: Detectron2's COCOEvaluator with faster-coco-eval when installed."""

from .fast_coco import (  # noqa: F401
    FASTER_COCO_EVAL_AVAILABLE,
    COCOEvaluator,
    FasterCOCOeval,
    get_cocoeval_class,
)
