"""Does an exported model predict what the eager model predicts? (docs/deploy.md, "Parity")

Instances are matched, not compared in order: instances whose scores differ by less than the
runtimes' rounding may come out in another order.
"""

from typing import Dict, Iterable, List

import torch

__all__ = [
    "BOX_ATOL",
    "SCORE_ATOL",
    "MASK_IOU_MIN",
    "compare_instances",
    "summarize_parity",
    "condition_random_heads",
]

# Tolerances of the exported models against eager (float32 throughout; onnxruntime's convolution
# and RoiAlign kernels round differently from PyTorch's). Boxes in pixels of the original image.
BOX_ATOL = 0.05
SCORE_ATOL = 1e-3
MASK_IOU_MIN = 0.99


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def compare_instances(
    expected,
    actual,
    *,
    box_atol: float = BOX_ATOL,
    score_atol: float = SCORE_ATOL,
    mask_iou_min: float = MASK_IOU_MIN,
) -> Dict:
    """Match the instances of two predictions of one image (e.g. eager, after
    ``detector_postprocess``, and exported) and measure their differences.

    Pairs: same class, score within ``score_atol``, every box coordinate within ``box_atol``
    pixels; the closest (largest coordinate difference) first, greedily.

    Returns:
        dict: ``expected``, ``actual`` and ``matched`` counts; ``box_max_abs``,
        ``score_max_abs`` and ``mask_iou_min`` over the matched pairs (None without pairs or
        masks); ``ok``: every instance matched on both sides and every mask IoU at least
        ``mask_iou_min``.
    """
    n_exp, n_act = len(expected), len(actual)
    boxes_e = expected.pred_boxes.tensor.float()
    boxes_a = actual.pred_boxes.tensor.float()
    box_diff = (boxes_e[:, None, :] - boxes_a[None, :, :]).abs().amax(dim=2)  # E x A
    score_diff = (expected.scores[:, None] - actual.scores[None, :]).abs()
    same_class = expected.pred_classes[:, None] == actual.pred_classes[None, :]
    candidate = same_class & (score_diff <= score_atol) & (box_diff <= box_atol)
    cost = torch.where(candidate, box_diff, torch.full_like(box_diff, float("inf")))
    pairs = []
    taken = torch.zeros(n_act, dtype=torch.bool)
    # greedy on the globally smallest difference first
    order = torch.argsort(cost.flatten()) if cost.numel() else torch.zeros(0, dtype=torch.long)
    matched_e = torch.zeros(n_exp, dtype=torch.bool)
    for flat in order.tolist():
        i, j = divmod(flat, n_act)
        if not torch.isfinite(cost[i, j]):
            break
        if matched_e[i] or taken[j]:
            continue
        matched_e[i], taken[j] = True, True
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
        ei = torch.tensor([p[0] for p in pairs])
        ai = torch.tensor([p[1] for p in pairs])
        result["box_max_abs"] = float(box_diff[ei, ai].max())
        result["score_max_abs"] = float(score_diff[ei, ai].max())
        if expected.has("pred_masks") and actual.has("pred_masks"):
            ious = [
                _mask_iou(expected.pred_masks[i].bool(), actual.pred_masks[j].bool())
                for i, j in pairs
            ]
            result["mask_iou_min"] = min(ious)
    masks_ok = result["mask_iou_min"] is None or result["mask_iou_min"] >= mask_iou_min
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


def _predictor_layers(model) -> List[List[torch.nn.Module]]:
    """The output layers of a GeneralizedRCNN, in the order in which they are conditioned (each
    group's inputs depend on the previous groups' outputs)."""
    rpn_head = model.proposal_generator.rpn_head
    groups = [[rpn_head.objectness_logits, rpn_head.anchor_deltas]]
    predictors = model.roi_heads.box_predictor
    if not isinstance(predictors, torch.nn.ModuleList):
        predictors = [predictors]
    for predictor in predictors:
        groups.append([predictor.cls_score, predictor.bbox_pred])
    if getattr(model.roi_heads, "mask_on", False):
        groups.append([model.roi_heads.mask_head.predictor])
    return groups


# Output spread (standard deviation) given to each randomly initialised output layer.
_TARGET_STD = {
    "objectness_logits": 2.0,  # RPN: proposals ranked by a spread-out objectness
    "anchor_deltas": 0.1,  # RPN: proposals near their anchors, not collapsed onto the border
    "cls_score": 2.0,  # box head: scores between 0 and 1, few ties
    "bbox_pred": 0.1,  # box head: small refinements (deltas are weighted by 10, 10, 5, 5)
    "predictor": 3.0,  # mask head: probabilities with structure, not all 0 or 1
}


@torch.no_grad()
def condition_random_heads(model, images: Iterable[torch.Tensor]):
    """Rescale the output layers of a randomly initialised R-CNN (in eval mode; changed in place
    and returned) so that its predictions look like a trained model's, for parity checks and
    latency measurements without trained weights: without it, scores saturate at 0 or 1 and ties
    decide which boxes survive NMS and the top-k.

    Each output layer (RPN objectness and deltas, box classifier and regressor of every stage,
    mask predictor) is scaled, weight and bias, so that its output's standard deviation on
    ``images`` (3 x H x W, model input format) is a fixed target; the layers are done in the
    order of inference, each after a forward with the previous ones scaled.
    """
    images = list(images)
    inputs = [{"image": image} for image in images]
    for group in _predictor_layers(model):
        outputs = {layer: [] for layer in group}
        hooks = [
            # output channels first: C x (everything else)
            layer.register_forward_hook(
                lambda m, i, o: outputs[m].append(o.detach().transpose(0, 1).flatten(1))
            )
            for layer in group
        ]
        try:
            model.inference(inputs, do_postprocess=False)
        finally:
            for hook in hooks:
                hook.remove()
        for layer, values in outputs.items():
            values = torch.cat(values, dim=1) if values else torch.zeros(0, 0)
            std = float(values.std()) if values.numel() > 1 else 0.0
            name = [n for n, m in model.named_modules() if m is layer][0].rsplit(".", 1)[-1]
            if std > 0:
                scale = _TARGET_STD[name] / std
                layer.weight.mul_(scale)
                if layer.bias is not None:
                    layer.bias.mul_(scale)
                    if name == "predictor":  # each class's mask logits centred on 0
                        layer.bias.sub_(values.mean(dim=1) * scale)
    return model
