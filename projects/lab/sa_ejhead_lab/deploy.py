"""Deployment in the lab: random output layers conditioned to look trained
(:func:`condition_random_heads`), and the CPU latency of exported models against the eager model
(``tools/benchmark.py --deploy``, docs/deploy.md): eager, TorchScript and onnxruntime run on the
same inputs through the same Detectron2 interface, so the times include the rescale and the mask
paste for all three."""

import functools
import logging
import os
import tempfile
import time
from typing import Dict, Iterable, List, Optional

import torch

from sa_ejhead.export import DEFAULT_OPSET, ExportedModel, check_parity, export_model

from .measure import fix_roi_counts, random_inputs, time_calls
from .specs import build_model_from_spec, parse_spec

__all__ = [
    "RUNTIMES",
    "condition_random_heads",
    "export_formats",
    "measure_deploy_many",
    "measure_deploy_configs",
    "limit_nms_candidates",
]

logger = logging.getLogger(__name__)

# runtime name -> export format
RUNTIMES = {"torchscript": "torchscript", "onnxruntime": "onnx"}


def export_formats(
    model,
    image: torch.Tensor,
    output_dir: str,
    runtimes: Iterable[str] = tuple(RUNTIMES),
    *,
    opset: int = DEFAULT_OPSET,
    num_threads: Optional[int] = None,
) -> Dict[str, Dict]:
    """Export ``model`` (traced on ``image``) for each runtime and load it back.

    Returns:
        dict: runtime -> ``{"model": ExportedModel, "path": str, "export_s": float}``.
    """
    exported = {}
    for runtime in runtimes:
        start = time.perf_counter()
        path, _ = export_model(model, image, output_dir, RUNTIMES[runtime], opset=opset)
        seconds = time.perf_counter() - start
        exported[runtime] = {
            "model": ExportedModel(path, num_threads=num_threads),
            "path": path,
            "export_s": seconds,
        }
    return exported


def measure_deploy_many(
    models: Dict,
    inputs: List[Dict],
    *,
    runtimes: Iterable[str] = tuple(RUNTIMES),
    runs: int = 3,
    warmup: int = 2,
    num_threads: Optional[int] = None,
    opset: int = DEFAULT_OPSET,
    output_dir: Optional[str] = None,
) -> Dict[str, Dict]:
    """CPU latency of eager models (label -> model, on the CPU, in eval mode) and of their
    exports (traced on ``inputs[0]["image"]``), with the exports' parity on ``inputs``. All are
    exported first, then every model in every runtime takes its turn, one call each, so that
    ratios between models are measured under the same load too.

    Args:
        inputs (list[dict]): Detectron2 inputs, one forward per call (batched as given).
        runtimes (iterable[str]): among "torchscript" and "onnxruntime".
        runs (int): timed calls per model and runtime.
        warmup (int): untimed calls first (TorchScript's profiling executor optimises the graph
            on its second call).
        num_threads (int or None): torch and onnxruntime intra-op threads (None: torch's).
        output_dir (str or None): the exports go to ``output_dir/<label>/`` (None: a temporary
            folder, removed afterwards).

    Returns:
        dict: label -> ``threads``; ``eager``: the figures of :func:`.measure.time_calls`; for
        each runtime its figures plus ``export_s`` (export time) and ``parity`` (the summary of
        :func:`sa_ejhead.export.check_parity` on ``inputs``).
    """
    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    threads = torch.get_num_threads()
    results, callables = {}, {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label, model in models.items():
                exported = export_formats(
                    model,
                    inputs[0]["image"],
                    os.path.join(output_dir or tmp, label),
                    runtimes,
                    opset=opset,
                    num_threads=threads,
                )
                parity = check_parity(model, {k: v["model"] for k, v in exported.items()}, inputs)
                results[label] = {"threads": threads}
                for runtime, item in exported.items():
                    summary = parity[runtime]["summary"]
                    results[label][runtime] = {"export_s": item["export_s"], "parity": summary}
                    callables[(label, runtime)] = item["model"]
                    logger.info("%s, %s: parity %s", label, runtime, summary)
                callables[(label, "eager")] = model
            with torch.no_grad():
                steps = {key: functools.partial(m, inputs) for key, m in callables.items()}
                timed = time_calls(steps, runs, warmup)
    finally:
        torch.set_num_threads(previous)
    for (label, runtime), figures in timed.items():
        results[label].setdefault(runtime, {}).update(figures)
        if output_dir:
            results[label]["output_dir"] = os.path.abspath(os.path.join(output_dir, label))
    return results


@torch.no_grad()
def limit_nms_candidates(model, inputs: List[Dict], candidates: int = 2000) -> float:
    """Set the box predictor's test score threshold so that ``candidates`` (box, class) pairs of
    the first input enter the box head's NMS; return it (unchanged for a cascade).

    At ``fix_roi_counts``' threshold 0, all 1000 x 80 pairs would: eager Detectron2 runs one NMS
    per class, but the traced graph one over all classes (``batched_nms``' coordinate-offset path),
    whose cost grows with the square of the candidates (seconds for 80 000). A trained model at the
    usual threshold (0.05) passes hundreds to a few thousand; this puts the random model there.
    """
    predictor = model.roi_heads.box_predictor
    if isinstance(predictor, torch.nn.ModuleList):
        return float(predictor[-1].test_score_thresh)
    logits = []
    hook = predictor.cls_score.register_forward_hook(lambda m, i, o: logits.append(o))
    try:
        model.inference(inputs[:1], do_postprocess=False)
    finally:
        hook.remove()
    scores = torch.softmax(logits[0], dim=1)[:, :-1].flatten()  # foreground classes
    if scores.numel() > candidates:
        kth = torch.topk(scores, candidates + 1).values
        predictor.test_score_thresh = float((kth[-2] + kth[-1]) / 2)
    return float(predictor.test_score_thresh)


def measure_deploy_configs(
    specs, options: Dict, runtimes: Iterable[str] = tuple(RUNTIMES), nms_candidates: int = 2000
) -> List[Dict]:
    """The figures of ``tools/benchmark.py --deploy`` for several config specs at once.

    Each model gets the cost table's RoI counts (``fix_roi_counts`` with the ``options``'
    ``proposals`` and ``detections``; not ``same_boxes``, which replaces scores that the parity
    check compares), its output layers conditioned (:func:`condition_random_heads`, so that
    scores are not tied), its score threshold set so that ``nms_candidates`` (box, class)
    pairs enter the box head's NMS (:func:`limit_nms_candidates`; 0: threshold 0); then all are
    measured by :func:`measure_deploy_many` on one random image of ``input_size``, with the
    ``options``' ``runs``, ``warmup`` and ``threads`` (0 or None: torch's).

    Returns:
        list[dict]: per config, as :func:`measure_deploy_many`, plus ``score_thresh`` and
        ``nms_candidates``.
    """
    specs = [parse_spec(s) if isinstance(s, str) else s for s in specs]
    inputs = random_inputs(*options["input_size"])
    models, thresholds = {}, {}
    for spec in specs:
        model = build_model_from_spec(spec)
        fix_roi_counts(model, options["proposals"], options["detections"])
        condition_random_heads(model, [x["image"] for x in inputs])
        thresholds[spec.label] = (
            limit_nms_candidates(model, inputs, nms_candidates) if nms_candidates else 0.0
        )
        models[spec.label] = model
    results = measure_deploy_many(
        models,
        inputs,
        runtimes=runtimes,
        runs=options["runs"],
        warmup=max(2, options["warmup"]),
        num_threads=options.get("threads") or None,
    )
    return [
        {**results[s.label], "score_thresh": thresholds[s.label], "nms_candidates": nms_candidates}
        for s in specs
    ]


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
