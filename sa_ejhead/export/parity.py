"""Does an exported model predict what the eager model predicts? (docs/deploy.md, "Parity")

Instances are matched, not compared in order: instances whose scores differ by less than the
runtimes' rounding may come out in another order.
"""

from typing import Dict, Iterable, List

import torch

# Tolerances of the exported models against eager (float32 throughout; onnxruntime's convolution
# and RoiAlign kernels round differently from PyTorch's). Boxes in pixels of the original image.
BOX_ATOL = 0.05
SCORE_ATOL = 1e-3
MASK_IOU_MIN = 0.99


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def compare_instances(expected, actual) -> Dict:
    """Match the instances of two predictions of one image (e.g. eager, after
    ``detector_postprocess``, and exported) and measure their differences.

    Pairs: same class, score within :data:`SCORE_ATOL`, every box coordinate within
    :data:`BOX_ATOL` pixels; the closest (largest coordinate difference) first, greedily.

    Returns:
        dict: ``expected``, ``actual`` and ``matched`` counts; ``box_max_abs``,
        ``score_max_abs`` and ``mask_iou_min`` over the matched pairs (None without pairs or
        masks); ``ok``: every instance matched on both sides and every mask IoU at least
        :data:`MASK_IOU_MIN`.
    """
    n_exp, n_act = len(expected), len(actual)
    boxes_e = expected.pred_boxes.tensor.float()
    boxes_a = actual.pred_boxes.tensor.float()
    box_diff = (boxes_e[:, None, :] - boxes_a[None, :, :]).abs().amax(dim=2)  # E x A
    score_diff = (expected.scores[:, None] - actual.scores[None, :]).abs()
    same_class = expected.pred_classes[:, None] == actual.pred_classes[None, :]
    candidate = same_class & (score_diff <= SCORE_ATOL) & (box_diff <= BOX_ATOL)
    cost = torch.where(candidate, box_diff, torch.full_like(box_diff, float("inf")))
    pairs, matched_e, matched_a = [], set(), set()
    for flat in torch.argsort(cost.flatten()).tolist():
        i, j = divmod(flat, n_act)
        if not torch.isfinite(cost[i, j]):
            break
        if i not in matched_e and j not in matched_a:
            matched_e.add(i)
            matched_a.add(j)
            pairs.append((i, j))
    result = {
        "expected": n_exp,
        "actual": n_act,
        "matched": len(pairs),
        "box_max_abs": None,
        "score_max_abs": None,
        "mask_iou_min": None,
    }
    if pairs:
        ei, ai = torch.tensor(pairs).T
        result["box_max_abs"] = float(box_diff[ei, ai].max())
        result["score_max_abs"] = float(score_diff[ei, ai].max())
        if expected.has("pred_masks") and actual.has("pred_masks"):
            result["mask_iou_min"] = min(
                _mask_iou(expected.pred_masks[i].bool(), actual.pred_masks[j].bool())
                for i, j in pairs
            )
    masks_ok = result["mask_iou_min"] is None or result["mask_iou_min"] >= MASK_IOU_MIN
    result["ok"] = len(pairs) == n_exp == n_act and masks_ok
    return result


def summarize_parity(results: Iterable[Dict]) -> Dict:
    """Combine :func:`compare_instances` results (several images): total counts, worst
    differences, ``ok`` if all are."""
    results = list(results)

    def worst(key, fn):
        values = [r[key] for r in results if r[key] is not None]
        return fn(values) if values else None

    return {
        "images": len(results),
        "expected": sum(r["expected"] for r in results),
        "actual": sum(r["actual"] for r in results),
        "matched": sum(r["matched"] for r in results),
        "box_max_abs": worst("box_max_abs", max),
        "score_max_abs": worst("score_max_abs", max),
        "mask_iou_min": worst("mask_iou_min", min),
        "ok": all(r["ok"] for r in results),
    }


def check_parity(model, exported: Dict, inputs: List[Dict]) -> Dict:
    """Compare the predictions of exported models (runtime name -> :class:`ExportedModel`) with
    the eager model's on Detectron2 ``inputs``, image by image (:func:`compare_instances`).

    Returns:
        dict: runtime -> ``{"images": [per-image results], "summary": summarize_parity(...)}``.
    """
    with torch.no_grad():
        expected = [model([x])[0]["instances"] for x in inputs]
    report = {}
    for runtime, exported_model in exported.items():
        per_image = [
            compare_instances(e, exported_model([x])[0]["instances"])
            for e, x in zip(expected, inputs)
        ]
        report[runtime] = {"images": per_image, "summary": summarize_parity(per_image)}
    return report
