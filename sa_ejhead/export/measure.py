"""Parity and CPU latency of exported models against the eager model, in one run.

:func:`measure_deploy` is what ``tools/benchmark.py --deploy`` calls for each config: export to
TorchScript and ONNX, run eager, TorchScript and onnxruntime (CPU execution provider) on the same
inputs through the same Detectron2 interface (so the time includes the rescale and the mask paste
for all three), time them and compare the exported predictions with eager's.
"""

import logging
import os
import statistics
import tempfile
import time
from typing import Dict, Iterable, List, Optional

import torch

from sa_ejhead.analysis.measure import time_inference

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
    "format_deploy_table",
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
    """Compare the predictions of exported models with the eager model's, image by image.

    Args:
        model (nn.Module): the eager model, in eval mode.
        exported (dict[str, ExportedModel]): runtime -> exported model.
        inputs (list[dict]): Detectron2 inputs (``image``, optionally ``height``/``width``).
        tolerances: ``box_atol``, ``score_atol``, ``mask_iou_min`` of :func:`compare_instances`.

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


def _time_interleaved(models: Dict, inputs: List[Dict], runs: int, warmup: int) -> Dict:
    """Time several models on the same inputs, one run of each in turn (so that a change of the
    machine's load falls on all of them alike).

    Returns:
        dict: name -> the figures of :func:`sa_ejhead.analysis.measure.time_inference` over
        ``runs`` runs.
    """
    with torch.no_grad():
        for model in models.values():
            for _ in range(warmup):
                model(inputs)
    timed = {name: [] for name in models}
    for _ in range(runs):
        for name, model in models.items():
            timed[name].append(time_inference(model, inputs, runs=1, warmup=0))
    result = {}
    for name, figures in timed.items():
        times = [f["times"][0] for f in figures]
        cpu = [f["cpu_median"] for f in figures]
        result[name] = {
            "median": statistics.median(times),
            "min": min(times),
            "times": times,
            "cpu_median": statistics.median(cpu),
        }
    return result


def measure_deploy(model, inputs: List[Dict], **kwargs) -> Dict:
    """CPU latency of the eager model and of its TorchScript and onnxruntime exports, with the
    parity of the exports on the same inputs.

    The exports are traced on ``inputs[0]["image"]``. Every runtime is called through the
    Detectron2 interface (``model(inputs)``: boxes rescaled, masks pasted at image size), so the
    times compare the same work, and the runtimes take turns, one run each (a change in the
    machine's load falls on all of them).

    Args:
        model (GeneralizedRCNN): on the CPU, in eval mode.
        inputs (list[dict]): Detectron2 inputs, one forward per call (batched as given).
        kwargs: ``runtimes``, ``runs``, ``warmup``, ``num_threads``, ``opset``, ``output_dir``
            of :func:`measure_deploy_many` (the exports go to ``output_dir/model/``).

    Returns:
        dict: ``threads``; ``eager``: the figures of
        :func:`sa_ejhead.analysis.measure.time_inference`; for each runtime its figures plus
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
    """:func:`measure_deploy` for several models at once: all are exported first, then every
    model in every runtime takes its turn, one run each, so that ratios between models (e.g. to
    a baseline's eager latency) are measured under the same load too.

    Args:
        models (dict[str, GeneralizedRCNN]): label -> model (on the CPU, in eval mode).
        inputs (list[dict]): Detectron2 inputs, one forward per call (batched as given).
        runtimes (iterable[str]): among "torchscript" and "onnxruntime".
        runs (int): timed calls per model and runtime.
        warmup (int): untimed calls first (TorchScript's profiling executor optimises the graph
            on its second call).
        num_threads (int or None): torch and onnxruntime intra-op threads (None: torch's current
            setting).
        opset (int): ONNX opset.
        output_dir (str or None): the exports go to ``output_dir/<label>/`` (None: a temporary
            folder, removed afterwards).

    Returns:
        dict[str, dict]: label -> the result of :func:`measure_deploy`.
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
            timed = _time_interleaved(callables, inputs, runs, warmup)
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
    the first input pass it, i.e. enter the box head's NMS.

    ``fix_roi_counts`` sets the threshold to 0: all 1000 x 80 (box, class) pairs enter the NMS.
    Eager Detectron2 then runs one NMS per class, but the traced graph runs a single NMS over all
    classes (torchvision's ``batched_nms`` takes its coordinate-offset path while tracing), whose
    cost grows with the square of the candidates (seconds for 80 000). A trained model at the
    usual threshold (0.05) passes hundreds to a few thousand; this puts the random model there.

    Returns:
        float: the threshold set (unchanged for a cascade).
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
    """The deployment figures of ``tools/benchmark.py --deploy``, for several configs at once.

    Each model is built as the cost table builds it (random weights, exactly ``proposals`` RoIs
    and ``detections`` detections per image: ``fix_roi_counts``), its output layers conditioned
    on the input (:func:`condition_random_heads`, so that scores are not tied), its score
    threshold set so that ``nms_candidates`` (box, class) pairs enter the box head's NMS
    (:func:`limit_nms_candidates`); then all are measured together by
    :func:`measure_deploy_many` on one random image of ``input_size``.

    Args:
        specs (list[ConfigSpec or str]): the configs (``sa_ejhead.analysis.specs``).
        options (dict): ``input_size`` (h, w), ``proposals``, ``detections``, ``runs``,
            ``warmup``, ``threads`` (0 or None: torch's current setting).
        runtimes (iterable[str]): among "torchscript" and "onnxruntime".
        nms_candidates (int): (box, class) pairs above the score threshold (0: threshold 0).

    Returns:
        list[dict]: per config, as :func:`measure_deploy`, plus ``score_thresh`` and
        ``nms_candidates``.
    """
    from sa_ejhead.analysis.measure import fix_roi_counts, random_inputs
    from sa_ejhead.analysis.specs import build_model_from_spec, parse_spec

    specs = [parse_spec(s) if isinstance(s, str) else s for s in specs]
    inputs = random_inputs(*options["input_size"])
    models, thresholds = {}, {}
    for spec in specs:
        model = build_model_from_spec(spec)
        fix_roi_counts(model, options["proposals"], options["detections"])
        with torch.no_grad():
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


def _cell(figures, base, key="median"):
    if not figures:
        return "-"
    value = figures[key]
    return f"{value:.2f} ({value / base:.2f}x)" if base else f"{value:.2f}"


def _parity_cell(figures):
    parity = (figures or {}).get("parity")
    if not parity:
        return "-"
    iou = "-" if parity["mask_iou_min"] is None else f"{parity['mask_iou_min']:.3f}"
    box = "-" if parity["box_max_abs"] is None else f"{parity['box_max_abs']:.1e}"
    return f"{'ok' if parity['ok'] else 'MISMATCH'} {parity['matched']}/{parity['expected']}, " + (
        f"box {box} px, IoU >= {iou}"
    )


def format_deploy_table(rows: List[Dict]) -> str:
    """Markdown table of :func:`measure_deploy_configs` results, latencies as ratios to the first
    row's eager latency.

    Args:
        rows (list[dict]): each with ``label`` and ``deploy`` (a :func:`measure_deploy` result).

    Returns:
        str: the table.
    """
    from tabulate import tabulate

    if not rows:
        return ""
    runtimes = ["eager"] + list(RUNTIMES)
    ref = rows[0]["deploy"]["eager"]
    table = []
    for row in rows:
        d = row["deploy"]
        table.append(
            [row["label"]]
            + [_cell(d.get(r), ref["median"]) for r in runtimes]
            + [_cell(d.get(r), ref["cpu_median"], "cpu_median") for r in runtimes]
            + [_parity_cell(d.get(r)) for r in RUNTIMES]
        )
    threads = rows[0]["deploy"]["threads"]
    names = ["eager", "TorchScript", "onnxruntime"]
    headers = ["Config"] + [f"{n} (s)" for n in names] + [f"{n} CPU time (s)" for n in names]
    headers += ["TorchScript vs eager", "onnxruntime vs eager"]
    note = (
        f"\nLatency: median wall time per image; CPU time: process CPU seconds per image, all "
        f"threads (less sensitive to other load). {threads} threads (torch intra-op = "
        "onnxruntime intra_op_num_threads, inter-op 1); rescale and mask paste included for every "
        "runtime; ratios to the first row's eager figures. Parity: instances matched to eager's, "
        "largest box difference, smallest mask IoU."
    )
    return tabulate(table, headers, tablefmt="github", disable_numparse=True) + note
