"""Cost of detection models: parameters, FLOPs, latency, training-step time and peak memory.

The engine behind ``tools/benchmark.py``. Every config is measured the same way:

* **FLOPs**: fvcore's count (one multiply-add = one FLOP, as Detectron2's
  ``tools/analyze_model.py`` reports) through ``detectron2.utils.analysis.FlopCountAnalysis``, on
  one random image of a fixed size (800x1216 by default), in inference mode. The number of RoIs is
  fixed so that models compare: the RPN keeps ``proposals`` (1000) boxes per image, and the box
  predictor keeps exactly ``detections`` (100) boxes, because its score threshold is set to 0 and
  its NMS threshold to 1.0 (no box is suppressed, the top ``detections`` by score are kept). The
  counts the ROI heads saw are recorded and reported.
* **Latency**: median wall time of ``runs`` inference forwards after ``warmup`` ones, same input
  and fixed counts, on the CPU with ``torch.get_num_threads()`` threads (and on CUDA when a GPU
  is present).
* **Training step**: median time of forward + backward + SGD step on a batch of random images
  with random ground truth (boxes and masks), after warm-up; a smaller size than the FLOPs one is
  the default on the CPU and is stated.
* **Peak memory**: each config and phase runs in a fresh subprocess; the peak resident set size
  (``ru_maxrss``) minus the RSS just before the phase. On CUDA,
  ``torch.cuda.max_memory_allocated``.

Config specs (``parse_spec``): ``[LABEL=]SOURCE[,KEY=VALUE...]`` where SOURCE is

* ``d2://PATH``: a file of Detectron2's model zoo (``detectron2.model_zoo.get_config``), e.g.
  ``d2://common/models/mask_rcnn_fpn.py`` or ``d2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml``;
* an existing file path (``.py`` LazyConfig, ``.yaml`` yacs config with our keys added);
* otherwise a path relative to this repository's ``configs/`` (``sa_ejhead.model_zoo``).

``KEY=VALUE`` pairs are overrides (dotted LazyConfig keys, or yacs keys such as
``MODEL.RESNETS.DEPTH=50``).
"""

import argparse
import contextlib
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import List

import torch

__all__ = [
    "ConfigSpec",
    "parse_spec",
    "build_model_from_spec",
    "fix_roi_counts",
    "random_inputs",
    "random_training_batch",
    "count_flops",
    "time_inference",
    "time_training_step",
    "measure_config",
    "format_cost_table",
    "time_coco_eval",
    "format_coco_eval_table",
    "get_parser",
    "main",
]

logger = logging.getLogger(__name__)

D2_PREFIX = "d2://"


@dataclass
class ConfigSpec:
    """A config to measure.

    Attributes:
        label (str): its name in the tables.
        source (str): ``d2://...``, a file path, or a path under ``configs/``.
        overrides (list[str]): ``KEY=VALUE`` overrides.
    """

    label: str
    source: str
    overrides: List[str] = field(default_factory=list)


def _split_top_level(text, sep=","):
    """Split on ``sep`` outside brackets and quotes (``fc_dims=[512,512]`` stays whole)."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def parse_spec(text):
    """Parse ``[LABEL=]SOURCE[,KEY=VALUE...]``.

    Args:
        text (str): the spec, e.g. ``"base=d2://common/models/mask_rcnn_fpn.py"`` or
            ``"common/models/mask_rcnn_safpn_ejhead.py,model.roi_heads.refinement=none"``.

    Commas inside brackets or quotes do not split (``KEY=[1,2]``).

    Returns:
        ConfigSpec: the label defaults to the file name without its extension.
    """
    head, *overrides = [t.strip() for t in _split_top_level(text)]
    label, source = None, head
    if "=" in head:
        label, source = head.split("=", 1)
    if not source:
        raise ValueError(f"Empty config source in spec {text!r}.")
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"Override {o!r} in spec {text!r} is not KEY=VALUE.")
    if not label:
        label = os.path.splitext(os.path.basename(source))[0]
    return ConfigSpec(label=label, source=source, overrides=overrides)


def _load_config(source):
    """Load a LazyConfig (omegaconf DictConfig) or a yacs CfgNode from a spec source."""
    from detectron2 import model_zoo as d2_model_zoo
    from detectron2.config import LazyConfig, get_cfg

    from sa_ejhead.config import add_sa_ejhead_config

    if source.startswith(D2_PREFIX):
        path = source[len(D2_PREFIX) :]
        if path.endswith(".yaml"):
            cfg = get_cfg()
            add_sa_ejhead_config(cfg)
            cfg.merge_from_file(d2_model_zoo.get_config_file(path))
            return cfg
        return d2_model_zoo.get_config(path)
    if not os.path.isfile(source):
        from sa_ejhead import model_zoo

        candidate = os.path.join(model_zoo.get_config_root(), source)
        if not os.path.isfile(candidate):
            raise FileNotFoundError(
                f"Config {source!r} is neither a file nor under {model_zoo.get_config_root()}; "
                f"Detectron2 model-zoo configs are written {D2_PREFIX}PATH."
            )
        source = candidate
    if source.endswith((".yaml", ".yml")):
        cfg = get_cfg()
        add_sa_ejhead_config(cfg)
        cfg.merge_from_file(source)
        return cfg
    return LazyConfig.load(source)


def build_model_from_spec(spec, seed=0):
    """Build the model of a config spec on the CPU, randomly initialised, in eval mode.

    Args:
        spec (ConfigSpec or str): the config.
        seed (int): torch seed for the initialisation.

    Returns:
        torch.nn.Module: the model.
    """
    from detectron2.config import CfgNode, instantiate
    from detectron2.modeling import build_model

    import sa_ejhead  # noqa: F401  (registers our modules for yacs configs)
    from sa_ejhead.engine.lazy import apply_lazy_overrides

    if isinstance(spec, str):
        spec = parse_spec(spec)
    cfg = _load_config(spec.source)
    torch.manual_seed(seed)
    if isinstance(cfg, CfgNode):
        cfg = cfg.clone()
        opts = []
        for o in spec.overrides:
            opts.extend(o.split("=", 1))
        cfg.merge_from_list(opts + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
        model = build_model(cfg)
    else:
        cfg = apply_lazy_overrides(cfg, spec.overrides, spec.source)
        model_cfg = cfg.model if "model" in cfg else cfg
        model = instantiate(model_cfg)
        model.to("cpu")
    model.eval()
    return model


def fix_roi_counts(model, proposals=1000, detections=100):
    """Make the ROI heads see exactly ``proposals`` RoIs and ``detections`` outputs per image.

    A randomly initialised RPN predicts huge box deltas: its proposals collapse onto the image
    border and its NMS leaves a handful, so the ROI heads' cost would depend on the random
    weights. For a cost measurement that compares models, this function

    * zeroes the RPN's box-delta predictor (proposals are the anchors, never empty) and disables
      its NMS (threshold 1.0), and sets its test ``pre_nms_topk`` to at least ``proposals`` and
      ``post_nms_topk`` to ``proposals``;
    * sets, for every box predictor (one per cascade stage), the test score threshold to 0, the
      NMS threshold to 1.0 (no suppression) and ``test_topk_per_image`` to ``detections``.

    NMS and top-k are not counted as FLOPs by fvcore; their time is small next to the convs.

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

    Args:
        height, width (int): image size.
        num_classes (int): classes are drawn from ``[0, num_classes)``.
        batch (int): images.
        objects (int): ground-truth instances per image.
        seed (int): random seed.

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


def count_flops(model, inputs):
    """fvcore FLOPs (multiply-adds) of one inference forward, total and per top-level part.

    Args:
        model (nn.Module): a Detectron2 model in eval mode.
        inputs (list[dict]): its inputs.

    Returns:
        dict: ``total`` FLOPs, ``parts`` (``bottom_up``, ``neck``, ``proposal_generator``,
        ``roi_heads``) and ``counts`` (the RoIs/detections per image the forward produced).
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
    by_module = {k[len("model.") :]: v for k, v in by_module.items() if k.startswith("model.")}
    backbone = by_module.get("backbone", 0)
    bottom_up = by_module.get("backbone.bottom_up", backbone)
    parts = {
        "bottom_up": bottom_up,
        "neck": backbone - bottom_up,
        "proposal_generator": by_module.get("proposal_generator", 0),
        "roi_heads": by_module.get("roi_heads", 0),
    }
    return {"total": total, "parts": parts, "counts": counts}


def _rss_bytes():
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes():
    """Peak resident set size of this process (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_inference(model, inputs, runs=5, warmup=1, device="cpu"):
    """Median wall time of inference forwards.

    Args:
        model (nn.Module): in eval mode.
        inputs (list[dict]): model inputs (on the CPU; the model moves them).
        runs (int): timed forwards.
        warmup (int): untimed forwards first.
        device (str): "cpu" or "cuda"; the model must be on it.

    Returns:
        dict: ``median``, ``min`` and ``times`` (wall seconds) and ``cpu_median`` (median CPU
        seconds of this process per run, all threads: less sensitive to other load on the
        machine than wall time).
    """
    device = torch.device(device)
    times, cpu_times = [], []
    with torch.no_grad():
        for i in range(warmup + runs):
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            model(inputs)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    return {
        "median": statistics.median(times),
        "min": min(times),
        "times": times,
        "cpu_median": statistics.median(cpu_times),
    }


def time_training_step(model, inputs, steps=3, warmup=1, device="cpu", lr=0.0):
    """Median wall time of a training step (forward, backward, SGD step).

    Args:
        model (nn.Module): a Detectron2 model (put in training mode here).
        inputs (list[dict]): training inputs with ``instances``.
        steps (int): timed steps.
        warmup (int): untimed steps first.
        device (str): "cpu" or "cuda"; the model must be on it.
        lr (float): SGD learning rate. 0 by default: the step does all its arithmetic (momentum
            and weight update included) but the randomly initialised weights don't change, so
            the timed steps are alike and cannot diverge on random data.

    Returns:
        dict: ``median``, ``min`` and ``times`` in seconds.
    """
    from detectron2.utils.events import EventStorage

    device = torch.device(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    times = []
    with EventStorage():
        for i in range(warmup + steps):
            _sync(device)
            start = time.perf_counter()
            losses = model(inputs)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    model.eval()
    return {"median": statistics.median(times), "min": min(times), "times": times}


def _num_classes(model):
    return int(getattr(getattr(model, "roi_heads", None), "num_classes", 1) or 1)


def measure_config(spec, phase, options):
    """Measure one config in this process.

    Args:
        spec (ConfigSpec): the config.
        phase (str): "infer" (parameters, CPU latency, inference peak memory, FLOPs, CUDA) or
            "train" (training-step time and peak memory).
        options (dict): ``input_size`` (h, w), ``proposals``, ``detections``, ``runs``,
            ``warmup``, ``train_size`` (h, w), ``train_batch``, ``train_steps``, ``threads``,
            ``flops`` (bool), ``cuda`` (bool).

    Returns:
        dict: the figures of that phase.
    """
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        model = build_model_from_spec(spec)
    fix_roi_counts(model, options["proposals"], options["detections"])
    out = {"threads": torch.get_num_threads()}
    use_cuda = options.get("cuda", True) and torch.cuda.is_available()
    if phase == "infer":
        out["params"] = sum(p.numel() for p in model.parameters())
        h, w = options["input_size"]
        inputs = random_inputs(h, w)
        rss0 = _rss_bytes()
        counts = {}
        with _record_roi_counts(model, counts):
            latency = time_inference(model, inputs, options["runs"], options["warmup"])
        out["cpu_latency"] = latency
        out["infer_peak_mb"] = max(0, _peak_rss_bytes() - rss0) / 2**20
        out["counts"] = counts
        if options.get("flops", True):
            out["flops"] = count_flops(model, inputs)
        if use_cuda:
            model.to("cuda")
            torch.cuda.reset_peak_memory_stats()
            out["cuda_latency"] = time_inference(
                model, inputs, max(options["runs"], 10), max(options["warmup"], 3), "cuda"
            )
            out["cuda_infer_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    elif phase == "train":
        h, w = options["train_size"]
        inputs = random_training_batch(h, w, _num_classes(model), options["train_batch"])
        rss0 = _rss_bytes()
        step = time_training_step(model, inputs, options["train_steps"], options["warmup"])
        out["train_step"] = step
        out["train_peak_mb"] = max(0, _peak_rss_bytes() - rss0) / 2**20
        if use_cuda:
            model.to("cuda")
            torch.cuda.reset_peak_memory_stats()
            out["cuda_train_step"] = time_training_step(
                model, inputs, options["train_steps"], options["warmup"], "cuda"
            )
            out["cuda_train_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        raise ValueError(f"Unknown phase {phase!r}: expected 'infer' or 'train'.")
    return out


def _worker(spec_dict, phase, options, queue):
    """Subprocess entry: measure and send the result (or the error) back."""
    try:
        queue.put(("ok", measure_config(ConfigSpec(**spec_dict), phase, options)))
    except Exception as e:  # reported by the parent
        import traceback

        queue.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def _measure_isolated(spec, phase, options):
    """Run :func:`measure_config` in a fresh process so peak memory is the config's own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(asdict(spec), phase, options, queue))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"Measuring {spec.label} ({phase}) failed:\n{payload}")
    return payload


def measure(specs, options, isolate=True, phases=("infer", "train"), log=print):
    """Measure every config and phase.

    Args:
        specs (list[ConfigSpec]): the configs; the first one is the reference of the ratios.
        options (dict): see :func:`measure_config`.
        isolate (bool): one subprocess per config and phase (peak memory is then meaningful).
        phases (tuple[str]): which of "infer" and "train" to run.
        log (callable): progress messages.

    Returns:
        list[dict]: per config, ``label``, ``source``, ``overrides`` and the figures.
    """
    rows = []
    for spec in specs:
        row = {"label": spec.label, "source": spec.source, "overrides": spec.overrides}
        for phase in phases:
            log(f"[benchmark] {spec.label}: {phase} ...")
            start = time.perf_counter()
            fn = _measure_isolated if isolate else measure_config
            figures = fn(spec, phase, options)
            row.update(figures)
            log(
                f"[benchmark] {spec.label}: {phase} done in {time.perf_counter() - start:.0f}s: "
                + json.dumps(_brief(figures))
            )
        rows.append(row)
    return rows


def _brief(figures):
    """The headline figures of a phase, for progress logs."""
    keys = ("params", "flops.total", "cpu_latency.median", "cpu_latency.cpu_median")
    keys += ("train_step.median", "infer_peak_mb", "train_peak_mb", "counts")
    return {k: _get(figures, k) for k in keys if _get(figures, k) is not None}


def _get(row, path):
    value = row
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


# (header, path in the row, scale, format)
_COLUMNS = [
    ("Params (M)", "params", 1e-6, "{:.1f}"),
    ("GFLOPs", "flops.total", 1e-9, "{:.1f}"),
    ("CPU latency (s)", "cpu_latency.median", 1, "{:.2f}"),
    ("CPU time/run (s)", "cpu_latency.cpu_median", 1, "{:.2f}"),
    ("CUDA latency (ms)", "cuda_latency.median", 1e3, "{:.1f}"),
    ("Train step CPU (s)", "train_step.median", 1, "{:.2f}"),
    ("Train step CUDA (ms)", "cuda_train_step.median", 1e3, "{:.1f}"),
    ("Peak RSS infer (MiB)", "infer_peak_mb", 1, "{:.0f}"),
    ("Peak RSS train (MiB)", "train_peak_mb", 1, "{:.0f}"),
    ("CUDA peak train (MiB)", "cuda_train_peak_mb", 1, "{:.0f}"),
]

_PARTS = ["bottom_up", "neck", "proposal_generator", "roi_heads"]


def format_cost_table(rows):
    """Markdown tables of the figures, each with its ratio to the first config.

    Args:
        rows (list[dict]): output of :func:`measure`.

    Returns:
        str: a cost table (columns without any figure are left out), then a FLOPs-per-part
        table when FLOPs were counted.
    """
    if not rows:
        return ""
    ref = rows[0]
    columns = [c for c in _COLUMNS if any(_get(r, c[1]) is not None for r in rows)]
    lines = [
        "| Config | " + " | ".join(c[0] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = []
        for _, path, scale, fmt in columns:
            value, base = _get(row, path), _get(ref, path)
            if value is None:
                cells.append("-")
                continue
            cell = fmt.format(value * scale)
            if base:
                cell += f" ({value / base:.2f}x)"
            cells.append(cell)
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if any(_get(r, "flops.parts") for r in rows):
        lines = [
            "",
            "| Config | "
            + " | ".join(f"{p} GFLOPs" for p in _PARTS)
            + " | RoIs / dets per image |",
            "|---|" + "---:|" * (len(_PARTS) + 1),
        ]
        for row in rows:
            parts = _get(row, "flops.parts") or {}
            cells = []
            for p in _PARTS:
                value, base = parts.get(p), (_get(ref, "flops.parts") or {}).get(p)
                cell = "-" if value is None else f"{value * 1e-9:.1f}"
                if value is not None and base:
                    cell += f" ({value / base:.2f}x)"
                cells.append(cell)
            counts = _get(row, "flops.counts") or {}
            cells.append(
                f"{'/'.join(map(str, counts.get('proposals', ['-'])))} / "
                f"{'/'.join(map(str, counts.get('detections', ['-'])))}"
            )
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        text += "\n" + "\n".join(lines)
    return text


def time_coco_eval(num_images=500, dets_per_image=100, image_size=(480, 640), seed=0, log=print):
    """Time pycocotools' COCOeval against faster-coco-eval on a synthetic results file.

    Args:
        num_images (int): images of the synthetic ground truth.
        dets_per_image (int): detections (with RLE masks) per image.
        image_size (tuple[int, int]): (height, width).
        seed (int): random seed.
        log (callable): progress messages.

    Returns:
        list[dict]: per IoU type, ``iou_type``, ``pycocotools`` and ``faster`` seconds (None if
        faster-coco-eval is missing), ``max_abs_diff`` of the 12 stats, ``num_dets``.
    """
    import tempfile

    from sa_ejhead.evaluation import (
        FASTER_COCO_EVAL_AVAILABLE,
        evaluate_coco_results,
        make_synthetic_coco,
    )

    log(f"[benchmark] generating {num_images} images x {dets_per_image} detections ...")
    gt, results = make_synthetic_coco(
        num_images=num_images,
        num_classes=8,
        max_objects=15,
        dets_per_image=dets_per_image,
        image_size=image_size,
        seed=seed,
    )
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        gt_file, res_file = os.path.join(tmp, "gt.json"), os.path.join(tmp, "results.json")
        for path, data in ((gt_file, gt), (res_file, results)):
            with open(path, "w") as f:
                json.dump(data, f)
        for iou_type in ("bbox", "segm"):
            row = {"iou_type": iou_type, "num_dets": len(results), "num_images": num_images}
            for name, fast in (("pycocotools", False), ("faster", True)):
                if fast and not FASTER_COCO_EVAL_AVAILABLE:
                    row[name] = None
                    continue
                start = time.perf_counter()
                stats = evaluate_coco_results(gt_file, res_file, iou_type, use_fast_impl=fast)
                row[name] = time.perf_counter() - start
                row[f"{name}_stats"] = stats
                log(f"[benchmark] COCO eval {iou_type} {name}: {row[name]:.2f}s")
            if row["faster"] is not None:
                row["max_abs_diff"] = max(
                    abs(a - b) for a, b in zip(row["pycocotools_stats"], row["faster_stats"])
                )
            out.append(row)
    return out


def format_coco_eval_table(rows):
    """Markdown table of :func:`time_coco_eval`'s timings and speed-ups."""
    lines = [
        "| IoU type | images | detections | pycocotools (s) | faster-coco-eval (s) | speed-up "
        "| max abs diff of stats |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fast = "-" if r["faster"] is None else f"{r['faster']:.2f}"
        ratio = "-" if r["faster"] is None else f"{r['pycocotools'] / r['faster']:.1f}x"
        diff = "-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}"
        lines.append(
            f"| {r['iou_type']} | {r['num_images']} | {r['num_dets']} | {r['pycocotools']:.2f} "
            f"| {fast} | {ratio} | {diff} |"
        )
    return "\n".join(lines)


def _size(text):
    parts = [int(v) for v in text.lower().replace("x", " ").replace(",", " ").split()]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected HxW or N")
    return tuple(parts)


def get_parser():
    """The argument parser of ``tools/benchmark.py``."""
    parser = argparse.ArgumentParser(
        description="Parameters, FLOPs, CPU (and CUDA) latency, training-step time and peak "
        "memory of detection configs, as Markdown tables with ratios to the first config.",
        epilog="Config spec: [LABEL=]SOURCE[,KEY=VALUE...]; SOURCE is d2://PATH (Detectron2's "
        "model zoo), a .py/.yaml file, or a path under this repository's configs/. Example: "
        "--configs base=d2://common/models/mask_rcnn_fpn.py "
        "ours=common/models/mask_rcnn_safpn_ejhead.py",
    )
    parser.add_argument("--configs", nargs="*", default=[], metavar="SPEC")
    parser.add_argument("--input-size", type=_size, default=(800, 1216), metavar="HxW")
    parser.add_argument("--proposals", type=int, default=1000, help="RoIs per image (test)")
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--runs", type=int, default=3, help="timed inference runs (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs/steps first")
    parser.add_argument("--train-size", type=_size, default=(512, 512), metavar="HxW")
    parser.add_argument("--train-batch", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument(
        "--no-infer",
        action="store_true",
        help="skip parameters, FLOPs, latency and inference memory (training step only)",
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOPs count")
    parser.add_argument("--no-cuda", action="store_true", help="skip CUDA even if present")
    parser.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure in this process (peak memory is then " "polluted by earlier configs)",
    )
    parser.add_argument("--coco-eval", action="store_true", help="time COCO evaluation too")
    parser.add_argument("--coco-eval-images", type=int, default=500)
    parser.add_argument("--coco-eval-dets", type=int, default=100)
    parser.add_argument("--output", default="", help="also write all figures as JSON here")
    return parser


def _header(args, threads, phases):
    """How the figures were measured, printed above the tables."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cuda = f", CUDA: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    how = []
    if "infer" in phases:
        h, w = args.input_size
        how.append(
            f"FLOPs (fvcore, 1 multiply-add = 1 FLOP) and latency at {h}x{w}, batch 1, "
            f"{args.proposals} proposals and {args.detections} detections per image; latency = "
            f"median of {args.runs} runs after {args.warmup} warm-up (CPU time/run: process CPU "
            "seconds, all threads)"
        )
    if "train" in phases:
        h, w = args.train_size
        how.append(
            f"train step = median of {args.train_steps} SGD steps after {args.warmup} warm-up at "
            f"{h}x{w}, batch {args.train_batch}, random ground truth"
        )
    how.append("peak RSS = peak resident memory above the model's, each config in a fresh process")
    lines = [
        f"Measured with torch {torch.__version__} on {cpu} ({os.cpu_count()} logical CPUs), "
        f"{threads} torch threads{cuda}.",
        "; ".join(how) + ".",
    ]
    return "\n".join(lines)


def main(argv=None):
    """Entry point of ``tools/benchmark.py``.

    Args:
        argv (list[str] or None): command-line arguments.

    Returns:
        dict: ``configs`` (per-config figures) and ``coco_eval`` (timings), also printed as
        Markdown.
    """
    args = get_parser().parse_args(argv)
    if not args.configs and not args.coco_eval:
        get_parser().error("nothing to do: give --configs and/or --coco-eval")
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [parse_spec(s) for s in args.configs]
    options = {
        "input_size": args.input_size,
        "proposals": args.proposals,
        "detections": args.detections,
        "runs": args.runs,
        "warmup": args.warmup,
        "train_size": args.train_size,
        "train_batch": args.train_batch,
        "train_steps": args.train_steps,
        "threads": args.threads or torch.get_num_threads(),
        "flops": not args.no_flops,
        "cuda": not args.no_cuda,
    }
    phases = tuple(
        p for p, skip in (("infer", args.no_infer), ("train", args.no_train)) if not skip
    )
    if specs and not phases:
        get_parser().error("--no-infer and --no-train leave nothing to measure")
    result = {"options": options, "configs": [], "coco_eval": []}
    if specs:
        result["configs"] = measure(specs, options, isolate=not args.no_isolate, phases=phases)
        print()
        print(_header(args, options["threads"], phases))
        print()
        print(format_cost_table(result["configs"]))
        for row in result["configs"]:
            for kind, expected in (("proposals", args.proposals), ("detections", args.detections)):
                seen = _get(row, f"flops.counts.{kind}") or _get(row, f"counts.{kind}") or []
                if any(n != expected for n in seen):
                    print(f"\nWARNING: {row['label']}: {kind} per image {seen} != {expected}")
    if args.coco_eval:
        result["coco_eval"] = time_coco_eval(args.coco_eval_images, args.coco_eval_dets)
        print()
        print("COCO evaluation time on a synthetic results file (single process):")
        print()
        print(format_coco_eval_table(result["coco_eval"]))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return result
