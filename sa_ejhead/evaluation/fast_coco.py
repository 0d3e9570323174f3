"""COCO evaluation with ``faster-coco-eval`` (C++, the same numbers) when it is installed: without
Detectron2's compiled ``_C``, its ``COCOEvaluator`` uses pycocotools' pure Python ``COCOeval``."""

import itertools

from pycocotools.cocoeval import COCOeval as PyCOCOeval

from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco

try:
    import faster_coco_eval
    from faster_coco_eval import COCO as _FasterCOCO
    from faster_coco_eval import COCOeval_faster as _COCOevalFaster
except ImportError:  # pragma: no cover - depends on the environment
    faster_coco_eval = None

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
