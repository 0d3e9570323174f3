"""Measurements of the cost tool: one FLOPs helper, one timing helper, peak memory, and the phases.

* **FLOPs** (:func:`count_flops`): fvcore's count through Detectron2's ``FlopCountAnalysis`` (one
  multiply-add = one FLOP, as ``tools/analyze_model.py``), one inference forward, with the RoI
  counts fixed by :func:`fix_roi_counts` so that models compare. Totals per top-level part and
  per module.
* **Time** (:func:`time_inference`, :func:`time_training_step`): median wall time after warm-up
  runs (CUDA synchronised); the demo's time fit uses the training-step one.
* **Peak memory**: each config and phase runs in a fresh subprocess (:func:`measure`); the peak
  resident set size minus the RSS just before the phase; on CUDA ``max_memory_allocated``.

:data:`PHASES` maps a phase name to the function that measures it; ``tools/benchmark.py`` runs
the phases it is asked for, so a new measurement is a new entry there (and its columns a new
entry of :data:`sa_ejhead.analysis.report.COLUMNS`).
"""

import contextlib
import io
import json
import multiprocessing as mp
import resource
import statistics
import time
from dataclasses import asdict

import torch

from .specs import ConfigSpec, build_model_from_spec

__all__ = [
    "fix_roi_counts",
    "random_inputs",
    "random_training_batch",
    "count_flops",
    "count_params",
    "time_calls",
    "time_inference",
    "time_training_step",
    "training_step",
    "PHASES",
    "merge_rounds",
    "measure_config",
    "measure",
]

PARTS = ("bottom_up", "neck", "proposal_generator", "roi_heads")


def fix_roi_counts(model, proposals=1000, detections=100):
    """Make the ROI heads see exactly ``proposals`` RoIs and ``detections`` outputs per image.

    A randomly initialised RPN predicts huge box deltas: its proposals collapse onto the image
    border and its NMS leaves a handful, so the ROI heads' cost would depend on the random
    weights. This zeroes the RPN's box-delta predictor (the proposals are the anchors) and turns
    its NMS off (threshold 1.0) with ``proposals`` kept; every box predictor (one per cascade
    stage) keeps exactly ``detections`` boxes (score threshold 0, NMS threshold 1.0). NMS and
    top-k are not counted as FLOPs by fvcore; their time is small next to the convs.

    Args:
        model (nn.Module): a Detectron2 R-CNN; changed in place.
        proposals (int): RoIs per image at inference.
        detections (int): detections per image at inference.

    Returns:
        nn.Module: the same model.
    """
    from detectron2.modeling.proposal_generator import RPN
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

    for module in model.modules():
        if isinstance(module, RPN):
            module.post_nms_topk[False] = proposals
            module.pre_nms_topk[False] = max(module.pre_nms_topk[False], proposals)
            module.nms_thresh = 1.0
            deltas = getattr(module.rpn_head, "anchor_deltas", None)
            if deltas is not None:
                with torch.no_grad():
                    deltas.weight.zero_()
                    deltas.bias.zero_()
        if isinstance(module, FastRCNNOutputLayers):
            module.test_score_thresh = 0.0
            module.test_nms_thresh = 1.0
            module.test_topk_per_image = detections
    return model


def random_inputs(height, width, batch=1, seed=0):
    """Random images in Detectron2's input format (uint8-valued float CHW tensors)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 256, (3, height, width), generator=g).float(),
            "height": height,
            "width": width,
        }
        for _ in range(batch)
    ]


def random_training_batch(height, width, num_classes, batch=2, objects=6, seed=0):
    """Random images with random boxes, classes and masks (``BitMasks``) as ground truth.

    Returns:
        list[dict]: Detectron2 training inputs with ``image`` and ``instances``.
    """
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    inputs = random_inputs(height, width, batch, seed)
    for item in inputs:
        xy = torch.rand(objects, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
        wh = (0.05 + torch.rand(objects, 2, generator=g) * 0.5) * torch.tensor([width, height])
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([width, height]) - 1.0)], 1)
        masks = torch.zeros(objects, height, width, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[i, y0 : y1 + 1, x0 : x1 + 1] = True
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, num_classes, (objects,), generator=g)
        inst.gt_masks = BitMasks(masks)
        item["instances"] = inst
    return inputs


@contextlib.contextmanager
def _record_roi_counts(model, counts):
    """Record, per forward, the RoIs per image entering the ROI heads and the detections out."""
    handles = []
    if getattr(model, "proposal_generator", None) is not None:

        def _proposals_hook(_module, _inputs, output):
            counts["proposals"] = [len(p) for p in output[0]]

        handles.append(model.proposal_generator.register_forward_hook(_proposals_hook))
    if getattr(model, "roi_heads", None) is not None:

        def _detections_hook(_module, _inputs, output):
            counts["detections"] = [len(d) for d in output[0]]

        handles.append(model.roi_heads.register_forward_hook(_detections_hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def count_params(model):
    """Parameters: ``total``, per top-level part (:data:`PARTS`) and ``refinement`` (EJ-Head's)."""
    from fvcore.nn import parameter_count

    by_module = parameter_count(model)
    parts = _split_parts(by_module)
    return {
        "total": by_module[""],
        "parts": dict(parts, refinement=by_module["roi_heads.refinement"]),
    }


def _split_parts(by_module):
    """Top-level parts from per-module figures (``backbone`` = bottom-up + neck)."""
    backbone = by_module.get("backbone", 0)
    bottom_up = by_module.get("backbone.bottom_up", backbone)
    return {
        "bottom_up": bottom_up,
        "neck": backbone - bottom_up,
        "proposal_generator": by_module.get("proposal_generator", 0),
        "roi_heads": by_module.get("roi_heads", 0),
    }


def count_flops(model, inputs):
    """fvcore FLOPs (multiply-adds) of one inference forward.

    Args:
        model (nn.Module): a Detectron2 model in eval mode.
        inputs (list[dict]): its inputs.

    Returns:
        dict: ``total``, ``parts`` (:data:`PARTS`), ``by_module`` (every module's FLOPs, named as
        in the model) and ``counts`` (the RoIs / detections per image the forward produced).
    """
    from detectron2.utils.analysis import FlopCountAnalysis

    counts = {}
    with _record_roi_counts(model, counts), torch.no_grad():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = analysis.total()
        by_module = analysis.by_module()
    # FlopCountAnalysis traces a TracingAdapter holding the model as ``model``
    # (modules up to two levels deep, e.g. "backbone.fpn_lateral2", "roi_heads.refinement")
    by_module = {
        k[len("model.") :]: v
        for k, v in by_module.items()
        if k.startswith("model.") and k.count(".") <= 2
    }
    return {
        "total": total,
        "parts": _split_parts(by_module),
        "by_module": by_module,
        "counts": counts,
    }


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def time_calls(step, runs=3, warmup=1, device="cpu"):
    """Median wall time of ``step()`` over ``runs`` calls after ``warmup`` untimed ones (CUDA
    synchronised around each call when ``device`` is CUDA). The one timing helper: inference,
    training steps and the demo's time fit go through it.

    Returns:
        dict: ``median``, ``min``, ``times`` (wall seconds) and ``cpu_median`` (median process
        CPU seconds per call, all threads: less sensitive to other load than wall time).
    """
    device = torch.device(device)
    times, cpu_times = [], []
    for i in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {
        "median": statistics.median(times),
        "min": min(times),
        "times": times,
        "cpu_median": statistics.median(cpu_times),
    }


def time_inference(model, inputs, runs=5, warmup=1, device="cpu"):
    """Median wall time of inference forwards.

    Args:
        model (nn.Module): in eval mode, on ``device``.
        inputs (list[dict]): model inputs (on the CPU; the model moves them).
        runs (int): timed forwards.
        warmup (int): untimed forwards first.
        device (str): "cpu" or "cuda".

    Returns:
        dict: ``median``, ``min``, ``times`` (wall seconds) and ``cpu_median`` (median process
        CPU seconds per run, all threads: less sensitive to other load than wall time).
    """
    with torch.no_grad():
        return time_calls(lambda: model(inputs), runs, warmup, device)


def time_training_step(model, inputs, steps=3, warmup=1, device="cpu", optimizer=None):
    """Median wall time of a training step (forward, backward, optimizer step).

    Args:
        model (nn.Module): a Detectron2 model (put in training mode here, eval mode after).
        inputs (list[dict]): training inputs with ``instances``.
        steps (int): timed steps.
        warmup (int): untimed steps first.
        device (str): "cpu" or "cuda"; the model must be on it.
        optimizer (torch.optim.Optimizer or None): None: SGD with momentum and learning rate 0,
            which does all the arithmetic of a step but leaves the random weights unchanged, so
            the timed steps are alike and cannot diverge on random data.

    Returns:
        dict: as :func:`time_inference`.
    """
    from detectron2.utils.events import EventStorage

    model.train()
    step = training_step(model, inputs, optimizer)
    with EventStorage():
        result = time_calls(step, steps, warmup, device)
    model.eval()
    return result


def training_step(model, inputs, optimizer=None):
    """One training step as a function of no arguments: forward (the model must be in training
    mode, inside a Detectron2 ``EventStorage``), backward, optimizer step.

    Args:
        model (nn.Module): a Detectron2 model.
        inputs (list[dict]): training inputs with ``instances``.
        optimizer (torch.optim.Optimizer or None): None: SGD with momentum and learning rate 0
            (all the arithmetic of a step, the weights unchanged; see :func:`time_training_step`).

    Returns:
        callable: the step.
    """
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)

    def step():
        losses = model(inputs)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    return step


def _num_classes(model):
    return int(getattr(getattr(model, "roi_heads", None), "num_classes", 1) or 1)


def measure_inference(model, options, use_cuda):
    """The "infer" phase: parameters, FLOPs, CPU (and CUDA) latency, inference peak memory."""
    params = count_params(model)
    out = {"params": params["total"], "param_parts": params["parts"]}
    h, w = options["input_size"]
    inputs = random_inputs(h, w)
    if options.get("runs", 0) > 0:
        rss0 = _rss_bytes()
        counts = {}
        with _record_roi_counts(model, counts):
            out["cpu_latency"] = time_inference(model, inputs, options["runs"], options["warmup"])
        out["infer_peak_mb"] = max(0, _peak_rss_bytes() - rss0) / 2**20
        out["counts"] = counts
    if options.get("flops", True):
        out["flops"] = count_flops(model, inputs)
        heads = getattr(model, "roi_heads", None)
        if getattr(heads, "refinement", None) is not None:  # to split its FLOPs (report.py)
            out["head_geometry"] = {
                "scope": heads.refinement_scope,
                "box_size": heads.box_pooler.output_size[0] // heads.box_refinement_downsample,
                "mask_size": heads.mask_pooler.output_size[0],
                "proposals": options["proposals"],
                "detections": options["detections"],
            }
    if use_cuda:
        model.to("cuda")
        torch.cuda.reset_peak_memory_stats()
        out["cuda_latency"] = time_inference(
            model, inputs, max(options["runs"], 10), max(options["warmup"], 3), "cuda"
        )
        out["cuda_infer_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def measure_training(model, options, use_cuda):
    """The "train" phase: training-step time and peak memory (CPU, and CUDA when present)."""
    h, w = options["train_size"]
    inputs = random_training_batch(h, w, _num_classes(model), options["train_batch"])
    rss0 = _rss_bytes()
    out = {
        "train_step": time_training_step(model, inputs, options["train_steps"], options["warmup"])
    }
    out["train_peak_mb"] = max(0, _peak_rss_bytes() - rss0) / 2**20
    if use_cuda:
        model.to("cuda")
        torch.cuda.reset_peak_memory_stats()
        out["cuda_train_step"] = time_training_step(
            model, inputs, options["train_steps"], options["warmup"], "cuda"
        )
        out["cuda_train_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _profile_phase(kind):
    """The per-op profile of ``kind`` ("infer" or "train") as a phase (:mod:`.profile`)."""

    def run(model, options, use_cuda):
        from .profile import PROFILERS

        profile = PROFILERS[kind](model, options)
        out = {f"profile_{kind}": profile}
        if "counts" in profile:  # the RoI counts, checked by tools/benchmark.py
            out["counts"] = profile["counts"]
        return out

    return run


# phase -> function(model, options, use_cuda) -> figures; the model is built and its RoI counts
# fixed before (a fresh model per config and phase). The "profile_*" phases are those of
# ``tools/benchmark.py --profile`` (CPU only).
PHASES = {
    "infer": measure_inference,
    "train": measure_training,
    "profile_infer": _profile_phase("infer"),
    "profile_train": _profile_phase("train"),
}


def measure_config(spec, phase, options):
    """Measure one phase of one config in this process.

    Args:
        spec (ConfigSpec): the config.
        phase (str): a key of :data:`PHASES`.
        options (dict): ``input_size`` (h, w), ``proposals``, ``detections``, ``runs`` (0: no
            latency), ``warmup``, ``train_size`` (h, w), ``train_batch``, ``train_steps``,
            ``threads``, ``flops`` (bool), ``cuda`` (bool).

    Returns:
        dict: the figures of that phase, and ``threads``.
    """
    if phase not in PHASES:
        raise ValueError(f"Unknown phase {phase!r}: expected one of {sorted(PHASES)}.")
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    with contextlib.redirect_stdout(io.StringIO()):
        model = build_model_from_spec(spec)
    fix_roi_counts(model, options["proposals"], options["detections"])
    use_cuda = options.get("cuda", True) and torch.cuda.is_available()
    return {"threads": torch.get_num_threads(), **PHASES[phase](model, options, use_cuda)}


def _worker(spec_dict, phase, options, queue):
    """Subprocess entry: measure and send the result (or the error) back."""
    try:
        queue.put(("ok", measure_config(ConfigSpec(**spec_dict), phase, options)))
    except Exception as e:  # reported by the parent
        import traceback

        queue.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def _measure_isolated(spec, phase, options):
    """Run :func:`measure_config` in a fresh process, so that peak memory is the config's own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(asdict(spec), phase, options, queue))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"Measuring {spec.label} ({phase}) failed:\n{payload}")
    return payload


_TIMINGS = ("cpu_latency", "train_step", "cuda_latency", "cuda_train_step")
_PEAKS = ("infer_peak_mb", "train_peak_mb", "cuda_infer_peak_mb", "cuda_train_peak_mb")


def merge_rounds(rounds):
    """One config's figures from several interleaved rounds of the same phase.

    Timings pool their calls (``median`` and ``min`` over all of them; ``cpu_median`` the median
    of the rounds'); a peak memory is the median of the rounds' peaks; every other figure is the
    first round's. ``rounds`` keeps each round's timing medians and peaks.

    Args:
        rounds (list[dict]): each round's figures (as :func:`measure_config` returns them).

    Returns:
        dict: the merged figures.
    """
    merged = dict(rounds[0])
    if len(rounds) == 1:
        return merged
    per_round = [{} for _ in rounds]
    for key in _TIMINGS:
        if key in merged:
            times = [t for r in rounds for t in r[key]["times"]]
            merged[key] = {
                "median": statistics.median(times),
                "min": min(times),
                "times": times,
                "cpu_median": statistics.median(r[key]["cpu_median"] for r in rounds),
            }
            for out, r in zip(per_round, rounds):
                out[key] = r[key]["median"]
    for key in _PEAKS:
        if key in merged:
            merged[key] = statistics.median(r[key] for r in rounds)
            for out, r in zip(per_round, rounds):
                out[key] = r[key]
    merged["rounds"] = per_round
    return merged


def measure(specs, options, isolate=True, phases=("infer", "train"), log=print, rounds=1):
    """Measure every config and phase.

    Args:
        specs (list[ConfigSpec]): the configs; the first one is the reference of the ratios.
        options (dict): see :func:`measure_config`.
        isolate (bool): one subprocess per config and phase (peak memory is then meaningful).
        phases (tuple[str]): keys of :data:`PHASES`.
        log (callable): progress messages.
        rounds (int): interleaved repeats: every config and phase is measured once per round, in
            the same order, so a machine that slows down or speeds up during the run moves every
            config alike; :func:`merge_rounds` pools them (FLOPs are counted in the first round
            only).

    Returns:
        list[dict]: per config, ``label``, ``source``, ``overrides`` and the figures.
    """
    figures = {(i, phase): [] for i in range(len(specs)) for phase in phases}
    for r in range(rounds):
        round_options = options if r == 0 else {**options, "flops": False}
        for i, spec in enumerate(specs):
            for phase in phases:
                tag = f" (round {r + 1}/{rounds})" if rounds > 1 else ""
                log(f"[benchmark] {spec.label}: {phase}{tag} ...")
                start = time.perf_counter()
                measured = (_measure_isolated if isolate else measure_config)(
                    spec, phase, round_options
                )
                figures[i, phase].append(measured)
                _log_brief(log, spec.label, phase + tag, measured, time.perf_counter() - start)
    rows = []
    for i, spec in enumerate(specs):
        row = {"label": spec.label, "source": spec.source, "overrides": spec.overrides}
        for phase in phases:
            merged = merge_rounds(figures[i, phase])
            per_round = merged.pop("rounds", None)
            if per_round:
                row.setdefault("rounds", [{} for _ in per_round])
                for out, figs in zip(row["rounds"], per_round):
                    out.update(figs)
            row.update(merged)
        rows.append(row)
    return rows


def _log_brief(log, label, phase, figures, seconds):
    brief = {k: v for k, v in figures.items() if isinstance(v, (int, float))}
    for key in ("flops", "cpu_latency", "train_step"):
        if key in figures:
            brief[key] = figures[key].get("total", figures[key].get("median"))
    for key in ("profile_infer", "profile_train"):
        if key in figures:
            brief[f"{key}_wall_ms"] = round(figures[key]["wall_ms"], 1)
    log(f"[benchmark] {label}: {phase} done in {seconds:.0f}s: " + json.dumps(brief))
