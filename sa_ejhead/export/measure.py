"""Parity and CPU latency of exported models against the eager model (``tools/benchmark.py
--deploy``): eager, TorchScript and onnxruntime run on the same inputs through the same Detectron2
interface, so the times include the rescale and the mask paste for all three."""

import functools
import logging
import os
import tempfile
import time
from typing import Dict, Iterable, List, Optional

import torch

from sa_ejhead.analysis.measure import fix_roi_counts, random_inputs, time_calls
from sa_ejhead.analysis.specs import build_model_from_spec, parse_spec

from .parity import compare_instances, condition_random_heads, summarize_parity
from .runtime import ExportedModel
from .tracing import DEFAULT_OPSET, export_model

__all__ = [
    "RUNTIMES",
    "export_formats",
    "check_parity",
    "measure_deploy",
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


def check_parity(model, exported: Dict[str, ExportedModel], inputs: List[Dict], **tolerances):
    """Compare the predictions of exported models (runtime -> model) with the eager model's on
    Detectron2 ``inputs``, image by image (``tolerances``: those of :func:`compare_instances`).

    Returns:
        dict: runtime -> ``{"images": [per-image results], "summary": ...}``.
    """
    with torch.no_grad():
        expected = [model([x])[0]["instances"] for x in inputs]
    report = {}
    for runtime, exported_model in exported.items():
        per_image = [
            compare_instances(e, exported_model([x])[0]["instances"], **tolerances)
            for e, x in zip(expected, inputs)
        ]
        report[runtime] = {"images": per_image, "summary": summarize_parity(per_image)}
    return report


def measure_deploy(model, inputs: List[Dict], **kwargs) -> Dict:
    """CPU latency of the eager model (on the CPU, in eval mode) and of its exports (traced on
    ``inputs[0]["image"]``), with the exports' parity on ``inputs``.

    Args:
        kwargs: those of :func:`measure_deploy_many` (the exports go to ``output_dir/model/``).

    Returns:
        dict: ``threads``; ``eager``: the figures of
        :func:`sa_ejhead.analysis.measure.time_calls`; for each runtime its figures plus
        ``export_s`` (export time) and ``parity`` (:func:`summarize_parity` of the inputs).
    """
    return measure_deploy_many({"model": model}, inputs, **kwargs)["model"]


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
    """:func:`measure_deploy` for several models (label -> model) at once: all are exported
    first, then every model in every runtime takes its turn, one call each, so that ratios
    between models are measured under the same load too.

    Args:
        inputs (list[dict]): Detectron2 inputs, one forward per call (batched as given).
        runtimes (iterable[str]): among "torchscript" and "onnxruntime".
        runs (int): timed calls per model and runtime.
        warmup (int): untimed calls first (TorchScript's profiling executor optimises the graph
            on its second call).
        num_threads (int or None): torch and onnxruntime intra-op threads (None: torch's).
        output_dir (str or None): the exports go to ``output_dir/<label>/`` (None: a temporary
            folder, removed afterwards).
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
        list[dict]: per config, as :func:`measure_deploy`, plus ``score_thresh`` and
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
