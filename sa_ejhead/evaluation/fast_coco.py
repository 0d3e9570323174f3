"""COCO evaluation with ``faster-coco-eval`` (C++, the same numbers) when it is installed: without
Detectron2's compiled ``_C``, its ``COCOEvaluator`` uses pycocotools' pure Python ``COCOeval``."""

import contextlib
import io
import itertools
import json

from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator
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
        """``faster_coco_eval.COCOeval_faster`` (pycocotools' ``COCOeval`` interface) taking
        pycocotools ``COCO`` objects too."""

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


def evaluate_coco_results(gt, results, iou_type, use_fast_impl=True):
    """The 12 ``COCOeval.stats`` (AP, AP50, AP75, AP_S, AP_M, AP_L, AR..., fractions; -1 where
    undefined) of COCO results (``coco_instances_results.json``, path or list) against a ground
    truth (COCO ``instances`` json, path or dict), for ``iou_type`` "bbox" or "segm", as
    Detectron2's ``COCOEvaluator`` computes them, with :func:`get_cocoeval_class`."""
    if isinstance(gt, str):
        with PathManager.open(gt) as f:
            gt = json.load(f)
    if isinstance(results, str):
        with PathManager.open(results) as f:
            results = json.load(f)
    results = [dict(r) for r in results]  # loadRes adds keys; keep the caller's list intact
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' prints
        coco_gt = PyCOCO()
        coco_gt.dataset = json.loads(json.dumps(gt))  # private copy: COCOeval marks annotations
        coco_gt.createIndex()
        coco_eval = _evaluate_predictions_on_coco(
            coco_gt, results, iou_type, cocoeval_fn=get_cocoeval_class(use_fast_impl)
        )
    return [float(s) for s in coco_eval.stats]


class COCOEvaluator(_D2COCOEvaluator):
    """Detectron2's ``COCOEvaluator`` (same arguments, outputs and metrics) evaluating with
    faster-coco-eval when it is installed and ``use_fast_impl=True`` (the default); keypoints and
    ``max_dets_per_image`` other than 100 use pycocotools. A predicted class id that the dataset
    does not have raises ValueError.
    """

    def __init__(self, *args, use_fast_impl=True, **kwargs):
        super().__init__(*args, use_fast_impl=False, **kwargs)
        self._use_fast_impl = use_fast_impl and FASTER_COCO_EVAL_AVAILABLE
        if use_fast_impl and not FASTER_COCO_EVAL_AVAILABLE:
            self._logger.info("faster-coco-eval is not installed; using pycocotools' COCOeval.")

    def _eval_predictions(self, predictions, img_ids=None):
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        results = list(itertools.chain(*[x["instances"] for x in predictions]))
        for result in results:
            if id_map is not None and not 0 <= result["category_id"] < len(id_map):
                raise ValueError(
                    f"A prediction has class={result['category_id']}, but the dataset only has "
                    f"{len(id_map)} classes (ids 0..{len(id_map) - 1})."
                )
        if not (self._use_fast_impl and self._do_evaluation):
            return super()._eval_predictions(predictions, img_ids)
        # Detectron2's method maps the class ids back, in place, and writes the results file; with
        # _do_evaluation off it stops there, and each task is evaluated here as its loop does
        # (Detectron2 0.7.2), with faster-coco-eval.
        self._do_evaluation = False
        try:
            super()._eval_predictions(predictions, img_ids)
        finally:
            self._do_evaluation = True
        self._logger.info("Evaluating predictions with faster-coco-eval ...")
        for task in sorted(self._tasks or self._tasks_from_predictions(results)):
            coco_eval = None  # pycocotools does not handle empty results, nor does Detectron2
            if results:
                coco_eval = _evaluate_predictions_on_coco(
                    self._coco_api,
                    results,
                    task,
                    kpt_oks_sigmas=self._kpt_oks_sigmas,
                    cocoeval_fn=PyCOCOeval if task == "keypoints" else FasterCOCOeval,
                    img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image,
                )
            classes = self._metadata.get("thing_classes")
            self._results[task] = self._derive_coco_results(coco_eval, task, class_names=classes)
