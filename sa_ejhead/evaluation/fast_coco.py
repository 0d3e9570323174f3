"""COCO evaluation with ``faster-coco-eval`` when it is installed.

Detectron2's fast ``COCOeval_opt`` needs its compiled ``_C`` extension; without it
``COCOEvaluator`` falls back to pycocotools' pure Python ``COCOeval`` (minutes on COCO val).
``faster-coco-eval`` does the same matching and accumulation in C++, with the same numbers.
"""

import contextlib
import io
import itertools
import json
from unittest import mock

from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator
from detectron2.evaluation import coco_evaluation
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.utils.file_io import PathManager

try:
    import faster_coco_eval
    from faster_coco_eval import COCO as _FasterCOCO
    from faster_coco_eval import COCOeval_faster as _COCOevalFaster
except ImportError:  # pragma: no cover - depends on the environment
    faster_coco_eval = None

__all__ = [
    "FASTER_COCO_EVAL_AVAILABLE",
    "COCOEvaluator",
    "FasterCOCOeval",
    "get_cocoeval_class",
    "evaluate_coco_results",
]

FASTER_COCO_EVAL_AVAILABLE = faster_coco_eval is not None


if FASTER_COCO_EVAL_AVAILABLE:

    class FasterCOCOeval(_COCOevalFaster):
        """``faster_coco_eval.COCOeval_faster`` taking pycocotools ``COCO`` objects too; its
        interface is pycocotools' ``COCOeval``'s, so Detectron2's evaluation code uses it as is."""

        def __init__(self, cocoGt=None, cocoDt=None, iouType="segm", **kwargs):
            super().__init__(_as_faster_coco(cocoGt), _as_faster_coco(cocoDt), iouType, **kwargs)

else:  # pragma: no cover - depends on the environment
    FasterCOCOeval = None


def _as_faster_coco(coco):
    """Wrap a pycocotools ``COCO`` as a faster-coco-eval ``COCO`` sharing its dataset dict."""
    if coco is None or isinstance(coco, _FasterCOCO):
        return coco
    wrapped = _FasterCOCO()
    wrapped.dataset = coco.dataset
    wrapped.createIndex()
    return wrapped


def get_cocoeval_class(use_fast_impl=True):
    """:class:`FasterCOCOeval` if ``use_fast_impl`` and faster-coco-eval is importable, else
    pycocotools' ``COCOeval``."""
    if use_fast_impl and FASTER_COCO_EVAL_AVAILABLE:
        return FasterCOCOeval
    return PyCOCOeval


def evaluate_coco_results(gt, results, iou_type, use_fast_impl=True, quiet=True):
    """Evaluate COCO results (Detectron2's ``coco_instances_results.json``, path or list) against
    a ground truth (COCO ``instances`` json, path or dict).

    Args:
        iou_type (str): "bbox" or "segm" (boxes dropped from the results, so that areas come from
            the masks, as Detectron2's ``COCOEvaluator`` does).
        use_fast_impl (bool): use faster-coco-eval when installed, else pycocotools.
        quiet (bool): silence pycocotools' prints.

    Returns:
        list[float]: the 12 ``COCOeval.stats`` (AP, AP50, AP75, AP_S, AP_M, AP_L, AR...),
        fractions in [0, 1] (-1 where undefined).
    """
    if isinstance(gt, str):
        with PathManager.open(gt) as f:
            gt = json.load(f)
    if isinstance(results, str):
        with PathManager.open(results) as f:
            results = json.load(f)
    results = [dict(r) for r in results]  # loadRes adds keys; keep the caller's list intact
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        coco_gt = PyCOCO()
        coco_gt.dataset = json.loads(json.dumps(gt))  # private copy: COCOeval marks annotations
        coco_gt.createIndex()
        coco_eval = _evaluate_predictions_on_coco(
            coco_gt, results, iou_type, cocoeval_fn=get_cocoeval_class(use_fast_impl)
        )
    return [float(s) for s in coco_eval.stats]


class COCOEvaluator(_D2COCOEvaluator):
    """Detectron2's ``COCOEvaluator`` (same arguments, outputs and metrics) evaluating with
    faster-coco-eval when it is installed and ``use_fast_impl=True`` (the default): the same AP as
    pycocotools (tested to 1e-4). ``max_dets_per_image`` other than 100 and keypoints use
    pycocotools, as in Detectron2.
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, **kwargs):
        use_fast_impl = kwargs.pop("use_fast_impl", True)
        super().__init__(
            dataset_name, tasks, distributed, output_dir, use_fast_impl=False, **kwargs
        )
        self._use_fast_impl = use_fast_impl and FASTER_COCO_EVAL_AVAILABLE
        if use_fast_impl and not FASTER_COCO_EVAL_AVAILABLE:
            self._logger.info("faster-coco-eval is not installed; using pycocotools' COCOeval.")

    def _eval_predictions(self, predictions, img_ids=None):
        """Detectron2's ``_eval_predictions`` with its module's ``COCOeval_opt`` (the compiled
        evaluator, used when ``_use_fast_impl``) replaced by faster-coco-eval during the call
        (keypoints stay on pycocotools). A class id that the dataset does not have raises
        ValueError (Detectron2 asserts)."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        for result in itertools.chain(*[x["instances"] for x in predictions]):
            if id_map is not None and not 0 <= result["category_id"] < len(id_map):
                raise ValueError(
                    f"A prediction has class={result['category_id']}, but the dataset only has "
                    f"{len(id_map)} classes (ids 0..{len(id_map) - 1})."
                )
        with mock.patch.object(coco_evaluation, "COCOeval_opt", _faster_unless_keypoints):
            super()._eval_predictions(predictions, img_ids)


def _faster_unless_keypoints(coco_gt, coco_dt, iou_type):
    return (PyCOCOeval if iou_type == "keypoints" else FasterCOCOeval)(coco_gt, coco_dt, iou_type)
