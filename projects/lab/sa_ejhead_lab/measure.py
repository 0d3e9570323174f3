"""Measurements of the cost tool (docs/benchmark.md): one FLOPs helper (:func:`count_flops`), one
timing helper (:func:`time_calls`), peak memory, and the phases.

:data:`PHASES` maps a phase name to the function that measures it: a new measurement is a new
entry there (and its columns a new entry of :data:`sa_ejhead_lab.report.COLUMNS`).
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
    "paired_ratios",
    "measure_paired",
]

PARTS = ("bottom_up", "neck", "proposal_generator", "roi_heads")


def fix_roi_counts(model, proposals=1000, detections=100, same_boxes=False):
    """Make the ROI heads see exactly ``proposals`` RoIs and ``detections`` outputs per image.

    A random RPN's huge box deltas collapse its proposals onto the image border and its NMS
    leaves a handful, so the ROI heads' cost would depend on the random weights. Hence: the RPN's
    box deltas zeroed (proposals = anchors), its NMS off; every box predictor (one per cascade
    stage) with score threshold 0 and NMS off. Changes ``model`` in place and returns it.

    ``same_boxes``: also, in inference and outside tracing, replace the RPN's objectness logits
    and the box predictor's class scores (after computing them) by seeded random values, the same
    for every model, and the box deltas by zeros: every config then pools the same anchors and
    the same detections. Without it each random model picks its own anchors, and an adaptive
    RoIAlign's cost (samples per bin grow with the box) follows its random weights.
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
            if same_boxes:
                module.rpn_head.register_forward_hook(_same_rpn_scores)
        if isinstance(module, FastRCNNOutputLayers):
            module.test_score_thresh = 0.0
            module.test_nms_thresh = 1.0
            module.test_topk_per_image = detections
            if same_boxes:
                module.register_forward_hook(_same_box_scores)
    return model


def _seeded_like(t, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)


def _same_rpn_scores(module, _inputs, output):
    """The RPN head's objectness logits replaced by the same seeded random values for every model
    (computed first, so their cost stays)."""
    if module.training or torch.jit.is_tracing():
        return output
    logits, deltas = output
    return [_seeded_like(x, i) for i, x in enumerate(logits)], deltas


def _same_box_scores(module, _inputs, output):
    """The box predictor's class scores replaced by seeded random values, its box deltas by
    zeros: the detections are the same proposals for every model."""
    if module.training or torch.jit.is_tracing():
        return output
    scores, deltas = output
    return _seeded_like(scores, 100), torch.zeros_like(deltas)


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
    """Detectron2 training inputs: random images with random boxes, classes and ``BitMasks``."""
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

    def hook(key):
        def record(_module, _inputs, output):
            counts[key] = [len(x) for x in output[0]]

        return record

    parts = (("proposal_generator", "proposals"), ("roi_heads", "detections"))
    handles = [
        getattr(model, part).register_forward_hook(hook(key))
        for part, key in parts
        if getattr(model, part, None) is not None
    ]
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
    """fvcore FLOPs (1 multiply-add = 1 FLOP, as Detectron2's ``tools/analyze_model.py``) of one
    inference forward of ``model`` (in eval mode) on ``inputs``.

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


def _timing(times, cpu_median):
    return {
        "median": statistics.median(times),
        "min": min(times),
        "times": times,
        "cpu_median": cpu_median,
    }


def time_calls(steps, runs=3, warmup=1, device="cpu"):
    """The one timing helper: wall time of ``runs`` calls of each step after ``warmup`` untimed
    ones (CUDA synchronised around each call when ``device`` is CUDA).

    The steps take turns, one call each, so that a change in the machine's load falls on all of
    them alike.

    Args:
        steps (dict[str, callable]): name -> function of no arguments.

    Returns:
        dict: name -> ``median``, ``min``, ``times`` (wall seconds) and ``cpu_median`` (median
        process CPU seconds per call, all threads: less sensitive to other load than wall time).
    """
    device = torch.device(device)
    times = {name: ([], []) for name in steps}
    for i in range(warmup + runs):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times[name][0].append(time.perf_counter() - start)
                times[name][1].append(time.process_time() - cpu_start)
    return {name: _timing(wall, statistics.median(cpu)) for name, (wall, cpu) in times.items()}


def time_inference(model, inputs, runs=5, warmup=1, device="cpu"):
    """:func:`time_calls` of ``model(inputs)`` without gradients (``model`` in eval mode, on
    ``device``; ``inputs`` on the CPU)."""
    with torch.no_grad():
        return time_calls({"": lambda: model(inputs)}, runs, warmup, device)[""]


def time_training_step(model, inputs, steps=3, warmup=1, device="cpu", optimizer=None):
    """:func:`time_calls` of :func:`training_step` (the model in training mode meanwhile, in eval
    mode after; on ``device``)."""
    from detectron2.utils.events import EventStorage

    model.train()
    step = training_step(model, inputs, optimizer)
    with EventStorage():
        result = time_calls({"": step}, steps, warmup, device)[""]
    model.eval()
    return result


def training_step(model, inputs, optimizer=None):
    """One training step (forward, backward, optimizer step) as a function of no arguments; the
    model must be in training mode, the call inside a Detectron2 ``EventStorage``.

    ``optimizer`` None: SGD with momentum at learning rate 0, which does all the arithmetic of a
    step but leaves the random weights unchanged, so that the steps are alike and cannot diverge
    on random data.
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


def _with_peak_mb(run, cuda=False):
    """``run()`` and the peak memory (MiB) above that before it: RSS, or CUDA's allocations."""
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        return run(), torch.cuda.max_memory_allocated() / 2**20
    rss0 = _rss_bytes()
    return run(), max(0, _peak_rss_bytes() - rss0) / 2**20


def measure_inference(model, options, use_cuda):
    """The "infer" phase: parameters, FLOPs, CPU (and CUDA) latency, inference peak memory."""
    params = count_params(model)
    out = {"params": params["total"], "param_parts": params["parts"]}
    h, w = options["input_size"]
    inputs = random_inputs(h, w)
    if options.get("runs", 0) > 0:
        counts = {}
        with _record_roi_counts(model, counts):
            out["cpu_latency"], out["infer_peak_mb"] = _with_peak_mb(
                lambda: time_inference(model, inputs, options["runs"], options["warmup"])
            )
        out["counts"] = counts
    if options.get("flops", True):
        out["flops"] = count_flops(model, inputs)
        heads = getattr(model, "roi_heads", None)
        if getattr(heads, "refinement", None) is not None:  # to split its FLOPs (report.py)
            out["head_geometry"] = {
                "scope": heads.refinement_scope,
                "box_size": heads.box_pooler.output_size[0] // heads.box_pooler.downsample,
                "mask_size": heads.mask_pooler.output_size[0],
                "proposals": options["proposals"],
                "detections": options["detections"],
            }
    if use_cuda:
        model.to("cuda")
        runs, warmup = max(options["runs"], 10), max(options["warmup"], 3)
        out["cuda_latency"], out["cuda_infer_peak_mb"] = _with_peak_mb(
            lambda: time_inference(model, inputs, runs, warmup, "cuda"), True
        )
    return out


def measure_training(model, options, use_cuda):
    """The "train" phase: training-step time and peak memory (CPU, and CUDA when present)."""
    h, w = options["train_size"]
    inputs = random_training_batch(h, w, _num_classes(model), options["train_batch"])
    steps, warmup = options["train_steps"], options["warmup"]
    out = {}
    out["train_step"], out["train_peak_mb"] = _with_peak_mb(
        lambda: time_training_step(model, inputs, steps, warmup)
    )
    if use_cuda:
        model.to("cuda")
        out["cuda_train_step"], out["cuda_train_peak_mb"] = _with_peak_mb(
            lambda: time_training_step(model, inputs, steps, warmup, "cuda"), True
        )
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


# phase -> function(model, options, use_cuda) -> figures, on a fresh model with its RoI counts
# fixed. The "profile_*" phases are ``tools/benchmark.py --profile``'s (CPU only).
PHASES = {
    "infer": measure_inference,
    "train": measure_training,
    "profile_infer": _profile_phase("infer"),
    "profile_train": _profile_phase("train"),
}


def measure_config(spec, phase, options):
    """Measure one phase (a key of :data:`PHASES`) of one config in this process.

    ``options``: ``input_size`` (h, w), ``proposals``, ``detections``, ``runs`` (0: no latency),
    ``warmup``, ``train_size`` (h, w), ``train_batch``, ``train_steps``, ``threads``, ``flops``
    (bool), ``cuda`` (bool). Returns the figures of that phase, and ``threads``.
    """
    if phase not in PHASES:
        raise ValueError(f"Unknown phase {phase!r}: expected one of {sorted(PHASES)}.")
    model = _measured_model(spec, options)
    use_cuda = options.get("cuda", True) and torch.cuda.is_available()
    return {"threads": torch.get_num_threads(), **PHASES[phase](model, options, use_cuda)}


def _measured_model(spec, options):
    """``spec``'s model as every measurement takes it: ``options["threads"]`` torch threads (if
    given), RoI counts fixed and the same boxes as every other config."""
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    with contextlib.redirect_stdout(io.StringIO()):
        model = build_model_from_spec(spec)
    return fix_roi_counts(model, options["proposals"], options["detections"], same_boxes=True)


def _worker(fn, args, queue):
    """Subprocess entry: run ``fn(*args)`` and send the result (or the error) back."""
    try:
        queue.put(("ok", fn(*args)))
    except Exception as e:  # reported by the parent
        import traceback

        queue.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def _in_fresh_process(what, fn, *args):
    """``fn(*args)`` in a fresh (spawned) process, so that its peak memory is its own; ``fn``
    and ``args`` must be picklable. An error there is raised here, with ``what`` and its
    traceback."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(fn, args, queue))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{what} failed:\n{payload}")
    return payload


def _measure_config_dict(spec_dict, phase, options):
    return measure_config(ConfigSpec(**spec_dict), phase, options)


def _measure_isolated(spec, phase, options):
    """Run :func:`measure_config` in a fresh process, so that peak memory is the config's own."""
    return _in_fresh_process(
        f"Measuring {spec.label} ({phase})", _measure_config_dict, asdict(spec), phase, options
    )


_TIMINGS = ("cpu_latency", "train_step", "cuda_latency", "cuda_train_step")
_PEAKS = ("infer_peak_mb", "train_peak_mb", "cuda_infer_peak_mb", "cuda_train_peak_mb")


def merge_rounds(rounds):
    """One config's figures from several rounds (:func:`measure_config` results) of one phase.

    Timings pool their calls (``median`` and ``min`` over all of them; ``cpu_median`` the median
    of the rounds'); a peak memory is the median of the rounds' peaks; every other figure is the
    first round's. ``rounds`` keeps each round's timing medians and peaks.
    """
    merged = dict(rounds[0])
    if len(rounds) == 1:
        return merged
    per_round = [{} for _ in rounds]
    for key in _TIMINGS:
        if key in merged:
            times = [t for r in rounds for t in r[key]["times"]]
            merged[key] = _timing(times, statistics.median(r[key]["cpu_median"] for r in rounds))
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
        rounds (int): interleaved repeats: every config and phase once per round, in the same
            order, so a machine whose speed drifts moves every config alike; pooled by
            :func:`merge_rounds` (FLOPs counted in the first round only).

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


def paired_ratios(times, base_times):
    """Per-call ratios of two configs timed in turns (:func:`time_calls`): call ``i`` of one over
    call ``i`` of the other, which ran just before or after it under the same load.

    Returns:
        dict: ``median`` (the estimate), ``min``, ``max`` and ``ratios``.
    """
    ratios = [t / b for t, b in zip(times, base_times)]
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "ratios": ratios,
    }


def _measure_paired_here(spec_dicts, options, phases):
    from detectron2.utils.events import EventStorage

    specs = [ConfigSpec(**d) for d in spec_dicts]
    models = {spec.label: _measured_model(spec, options) for spec in specs}
    out = {}
    if "infer" in phases:
        inputs = random_inputs(*options["input_size"])
        steps = {label: (lambda m=m: m(inputs)) for label, m in models.items()}
        with torch.no_grad():
            out["cpu_latency"] = time_calls(steps, options["paired"], options["warmup"])
    if "train" in phases:
        steps = {}
        for label, m in models.items():
            m.train()
            batch = random_training_batch(
                *options["train_size"], _num_classes(m), options["train_batch"]
            )
            steps[label] = training_step(m, batch)
        with EventStorage():
            out["train_step"] = time_calls(steps, options["paired"], options["warmup"])
    return out


def measure_paired(specs, options, phases=("infer", "train"), isolate=True):
    """Time every config in one fresh process (``isolate``; else in this one), in turns, one call
    each (``options["paired"]`` calls per config after ``warmup``), and give each config's
    per-call ratios to the first's.

    Machines whose speed drifts over seconds (a shared VM) move two configs timed minutes apart,
    in separate processes, by more than the difference to be measured; neighbouring calls share
    the drift, so the median of the per-call ratios (:func:`paired_ratios`) is the estimate least
    moved by it. Peak memory cannot be told apart in one process: :func:`measure` gives it.

    Returns:
        list[dict]: per config, ``label`` and, per phase timed (``cpu_latency``, ``train_step``),
        the figures of :func:`time_calls` with ``ratio`` (:func:`paired_ratios`; 1 for the first).
    """
    args = ([asdict(s) for s in specs], options, phases)
    if isolate:
        payload = _in_fresh_process("The paired measurement", _measure_paired_here, *args)
    else:
        payload = _measure_paired_here(*args)
    base = specs[0].label
    rows = []
    for spec in specs:
        row = {"label": spec.label}
        for key, timed in payload.items():
            row[key] = dict(timed[spec.label])
            row[key]["ratio"] = paired_ratios(timed[spec.label]["times"], timed[base]["times"])
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
