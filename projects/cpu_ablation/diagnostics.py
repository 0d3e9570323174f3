#!/usr/bin/env python
"""Diagnostics of the ablation protocol (docs/ablation.md, "Diagnostics").

    python projects/cpu_ablation/diagnostics.py spans [--config C --checkpoint W]     # (c)
    python projects/cpu_ablation/diagnostics.py interleave RUN_DIR [RUN_DIR ...]        # (d)
    python projects/cpu_ablation/diagnostics.py gt-masks --config C --checkpoint W      # (e)

* ``spans``: how many feature cells a RoI spans on the level it is pooled from,
  ``sqrt(area) / stride(level)`` with Detectron2's level assignment
  ``clip(floor(4 + log2(sqrt(area) / canonical)), 2, 5)``, for the v1 protocol (test shorter
  side 128, canonical size 36) and v2 (192, 224): over the ground-truth boxes of
  ``sa_shapes_val``, and over a trained model's validation proposals when ``--config`` and
  ``--checkpoint`` are given; beside COCO's by the same formula (see :func:`coco_spans`).
* ``interleave``: the interleaving's statistics that a training run logged to ``metrics.json``
  (regressed positives, positives kept, GT boxes dropped per image).
* ``gt-masks``: mask AP of a trained model with its masks predicted on the ground-truth boxes
  (and classes) instead of its own detections: the mask head's quality without the box head's.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

from ablation.store import metrics_rows

# (test shorter side, canonical box size) of each protocol; SA-Shapes images are 192 x 256.
GEOMETRIES = {"v1": (128, 36), "v2": (192, 224)}
SPAN_BINS = (0, 2, 4, 7, 14, 28, math.inf)

# COCO 2017 instances by COCO's own size buckets (area in original pixels): about 41% small
# (< 32^2), 34% medium, 24% large (> 96^2) (Lin et al., 2014, and the COCO detection page).
COCO_SHARES = (
    ("small", 0.41, 4.0, 32.0),
    ("medium", 0.34, 32.0, 96.0),
    ("large", 0.25, 96.0, 480.0),
)
COCO_SCALE = 800 / 480  # a typical 640 x 480 image resized to the shorter side 800


def levels_and_spans(sizes, canonical, canonical_level=4, min_level=2, max_level=5):
    """Detectron2's level assignment (``assign_boxes_to_levels``) and the span in cells.

    Args:
        sizes (np.ndarray): sqrt(box area) in input-image pixels.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    level = np.floor(canonical_level + np.log2(sizes / canonical + 1e-8))
    level = np.clip(level, min_level, max_level)
    return level, sizes / 2.0**level


def coco_spans(n=200000, seed=0):
    """Spans of COCO-like boxes at Detectron2's default geometry (shorter side 800, canonical
    224), from COCO's size shares with sqrt(area) log-uniform inside each bucket: an estimate,
    since COCO's annotations are not on this machine."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _, share, lo, hi in COCO_SHARES:
        k = int(n * share)
        sizes.append(np.exp(rng.uniform(math.log(lo), math.log(hi), size=k)) * COCO_SCALE)
    return levels_and_spans(np.concatenate(sizes), 224)[1]


def histogram(spans):
    """Share of RoIs per span bin (cells) and the quartiles."""
    spans = np.asarray(spans)
    counts, _ = np.histogram(spans, bins=SPAN_BINS)
    shares = counts / max(1, len(spans))
    return {
        "n": int(len(spans)),
        "bins": [f"{lo}-{hi}" for lo, hi in zip(SPAN_BINS[:-1], SPAN_BINS[1:])],
        "share": [round(float(s), 3) for s in shares],
        "quartiles": [round(float(q), 1) for q in np.percentile(spans, [25, 50, 75])],
        "over_7": round(float((spans > 7).mean()), 3),
    }


def gt_sizes(dataset="sa_shapes_val"):
    """sqrt(area) of every ground-truth box (XYWH) of a registered dataset, with its image's
    height, in original pixels."""
    from detectron2.data import DatasetCatalog

    sizes = []
    for record in DatasetCatalog.get(dataset):
        for ann in record["annotations"]:
            w, h = ann["bbox"][2], ann["bbox"][3]
            sizes.append((math.sqrt(max(w * h, 0.0)), record["height"]))
    return np.array(sizes)


def proposal_spans(config, checkpoint, canonical=None, max_images=None):
    """Spans of a trained model's validation proposals (the RoIs its box head pools at test
    time), at the config's test size and canonical box size (or ``canonical``)."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate

    from sa_ejhead.engine import build_lazy_model, load_lazy_config

    cfg = load_lazy_config(config, ["train.device=cpu"])
    model = build_lazy_model(cfg)
    DetectionCheckpointer(model).load(checkpoint)
    model.eval()
    canonical = canonical or cfg.model.roi_heads.box_pooler.canonical_box_size
    loader = instantiate(cfg.dataloader.test)
    sizes = []
    with torch.no_grad():
        for i, inputs in enumerate(loader):
            if max_images is not None and i >= max_images:
                break
            images = model.preprocess_image(inputs)
            features = model.backbone(images.tensor)
            proposals, _ = model.proposal_generator(images, features, None)
            for p in proposals:
                sizes.append(p.proposal_boxes.area().clamp(min=0).sqrt().numpy())
    return levels_and_spans(np.concatenate(sizes), canonical)[1]


def cmd_spans(args):
    import sa_ejhead  # noqa: F401  (registers the datasets)

    out = {"formula": "sqrt(area) / 2^level, level = clip(floor(4 + log2(sqrt(area)/c)), 2, 5)"}
    sizes = gt_sizes()
    for name, (short, canonical) in GEOMETRIES.items():
        scale = short / sizes[:, 1]  # images are resized to the test shorter side
        out[f"{name} GT boxes (test {short}, canonical {canonical})"] = histogram(
            levels_and_spans(sizes[:, 0] * scale, canonical)[1]
        )
    out["COCO GT boxes, estimate (test 800, canonical 224)"] = histogram(coco_spans())
    if args.config and args.checkpoint:
        spans = proposal_spans(
            args.config, args.checkpoint, canonical=args.canonical, max_images=args.max_images
        )
        where = f"canonical {args.canonical}" if args.canonical else "the config's canonical size"
        out[f"proposals of {args.checkpoint} ({args.config}, {where})"] = histogram(spans)
    _print(out, args.json)


def cmd_interleave(args):
    keys = (
        "roi_head/interleave_num_regressed_pos",
        "roi_head/interleave_num_pos",
        "roi_head/interleave_num_dropped_gt",
    )
    out = {}
    for run in args.runs:
        rows = [r for r in metrics_rows(run) if keys[0] in r]
        if not rows:
            raise SystemExit(f"{run}/metrics.json: no {keys[0]} (not an interleaving run?)")
        last = rows[len(rows) // 2 :]  # the second half of training
        out[run] = {
            k.split("/")[1]: round(float(np.mean([r[k] for r in last if k in r])), 2) for k in keys
        }
        out[run]["logged_iterations"] = [rows[len(rows) // 2]["iteration"], rows[-1]["iteration"]]
    _print(out, args.json)


def cmd_gt_masks(args):
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate
    from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
    from detectron2.structures import Instances

    from sa_ejhead.engine import build_lazy_model, load_lazy_config
    from sa_ejhead.evaluation import COCOEvaluator

    cfg = load_lazy_config(args.config, ["train.device=cpu"])
    model = build_lazy_model(cfg)
    DetectionCheckpointer(model).load(args.checkpoint)
    model.eval()
    # the test resize, but a mapper that keeps the annotations (as training does)
    mapper = instantiate(cfg.dataloader.test.mapper)
    mapper.is_train = True
    mapper.use_instance_mask = False
    names = cfg.dataloader.test.dataset.names
    dicts = get_detection_dataset_dicts(names, filter_empty=False)
    loader = build_detection_test_loader(dicts, mapper=mapper, num_workers=0)
    evaluator = COCOEvaluator(names, tasks=("segm",), output_dir=None)
    evaluator.reset()
    with torch.no_grad():
        for inputs in loader:
            given = []
            for x in inputs:
                gt = x["instances"]
                inst = Instances(gt.image_size)
                inst.pred_boxes = gt.gt_boxes
                inst.pred_classes = gt.gt_classes
                inst.scores = torch.ones(len(gt))
                given.append(inst)
                del x["instances"]
            outputs = model.inference(inputs, detected_instances=given)
            evaluator.process(inputs, outputs)
    results = evaluator.evaluate()
    _print({"checkpoint": args.checkpoint, "segm_on_gt_boxes": results.get("segm", {})}, args.json)


def _print(out, path):
    text = json.dumps(out, indent=1)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("spans", help="(c) RoI span distributions")
    p.add_argument("--config", help="a trained model's config, for its proposals' spans")
    p.add_argument("--checkpoint", help="its weights")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--canonical", type=int, default=None, help="instead of the config's")
    p = sub.add_parser("interleave", help="(d) interleaving statistics of training runs")
    p.add_argument("runs", nargs="+", help="run directories (with metrics.json)")
    p = sub.add_parser("gt-masks", help="(e) mask AP with masks predicted on the GT boxes")
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True)
    for p in sub.choices.values():
        p.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    {"spans": cmd_spans, "interleave": cmd_interleave, "gt-masks": cmd_gt_masks}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
