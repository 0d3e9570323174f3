"""COCO evaluation in the lab: deterministic synthetic ground truth and detections
(:func:`make_synthetic_coco`, to test and time it), and how long pycocotools' COCOeval and
faster-coco-eval take on them (:func:`time_coco_eval`, ``tools/benchmark.py --coco-eval``)."""

import contextlib
import io
import json
import os
import tempfile
import time

import numpy as np
import pycocotools.mask as mask_util

from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.utils.file_io import PathManager
from pycocotools.coco import COCO

from sa_ejhead.evaluation import FASTER_COCO_EVAL_AVAILABLE, get_cocoeval_class

__all__ = ["evaluate_coco_results", "make_synthetic_coco", "time_coco_eval"]


def evaluate_coco_results(gt, results, iou_type, use_fast_impl=True):
    """The 12 ``COCOeval.stats`` (AP, AP50, AP75, AP_S, AP_M, AP_L, AR..., fractions; -1 where
    undefined) of COCO results (``coco_instances_results.json``, path or list) against a ground
    truth (COCO ``instances`` json, path or dict), for ``iou_type`` "bbox" or "segm", as
    Detectron2's ``COCOEvaluator`` computes them, with :func:`get_cocoeval_class`."""
    if isinstance(gt, str):
        with PathManager.open(gt) as f:
            gt = json.load(f)
    if isinstance(results, str):
        with PathManager.open(results) as f:
            results = json.load(f)
    results = [dict(r) for r in results]  # loadRes adds keys; keep the caller's list intact
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' prints
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))  # private copy: COCOeval marks annotations
        coco_gt.createIndex()
        coco_eval = _evaluate_predictions_on_coco(
            coco_gt, results, iou_type, cocoeval_fn=get_cocoeval_class(use_fast_impl)
        )
    return [float(s) for s in coco_eval.stats]


def _polygon(rng, cx, cy, rx, ry, num_vertices):
    """Return a star-shaped polygon around (cx, cy) as a flat [x0, y0, x1, y1, ...] list."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=num_vertices))
    radii = rng.uniform(0.6, 1.0, size=num_vertices)
    xs = cx + rx * radii * np.cos(angles)
    ys = cy + ry * radii * np.sin(angles)
    return np.stack([xs, ys], axis=1).reshape(-1).round(2).tolist()


def _rle_from_polygon(polygon, height, width):
    """Compressed RLE (``counts`` as str, as Detectron2 writes results) of a polygon."""
    rle = mask_util.merge(mask_util.frPyObjects([polygon], height, width))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def make_synthetic_coco(
    num_images=20, num_classes=4, max_objects=8, dets_per_image=20, image_size=(128, 160), seed=0
):
    """Build a COCO ground-truth dict and a matching results list; the same arguments give the
    same data.

    Ground truth (1 to ``max_objects`` objects per image, category ids 1..``num_classes``) mixes
    polygons, uncompressed RLE and a few crowd regions, with objects from a few pixels to most of
    the image, so the small/medium/large ranges are all populated when ``image_size`` (h, w)
    allows. Detections are jittered copies of the ground truth (boxes and RLE masks) plus false
    positives, with random scores, at most ``dets_per_image`` per image.

    Returns:
        tuple[dict, list[dict]]: the ground truth (a COCO ``instances`` dict) and the results
        (a list of ``{"image_id", "category_id", "bbox", "score", "segmentation"}`` dicts, the
        format of Detectron2's ``coco_instances_results.json``).
    """
    rng = np.random.RandomState(seed)
    height, width = image_size
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append(
            {"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.jpg"}
        )
        num_objects = rng.randint(1, max_objects + 1)
        objects = []
        for _ in range(num_objects):
            if rng.rand() < 0.2:  # large: a third to a half of the image
                scale = rng.uniform(0.3, 0.5) * min(height, width)
            else:  # from a few pixels to medium, log-uniform
                scale = np.exp(rng.uniform(np.log(2.0), np.log(0.3 * min(height, width))))
            cx, cy = rng.uniform(scale, width - scale), rng.uniform(scale, height - scale)
            rx, ry = scale * rng.uniform(0.6, 1.4), scale * rng.uniform(0.6, 1.4)
            category_id = int(rng.randint(1, num_classes + 1))
            polygon = _polygon(rng, cx, cy, rx, ry, rng.randint(5, 12))
            rle = _rle_from_polygon(polygon, height, width)
            area = float(mask_util.area(rle))
            if area < 1:
                continue
            x, y, w, h = mask_util.toBbox(rle).tolist()
            iscrowd = int(rng.rand() < 0.05)
            if iscrowd or rng.rand() < 0.3:  # uncompressed RLE, as COCO stores crowd regions
                segmentation = _uncompressed_rle(mask_util.decode(rle))
            else:
                segmentation = [polygon]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": area,
                    "iscrowd": iscrowd,
                    "segmentation": segmentation,
                }
            )
            objects.append((cx, cy, rx, ry, category_id, polygon))
        for det in range(dets_per_image):
            if objects and det < 2 * len(objects):
                # a true positive candidate: the object's polygon, shifted and rescaled
                cx, cy, rx, ry, category_id, polygon = objects[det % len(objects)]
                jitter = rng.uniform(-0.15, 0.15, size=4)
                xy = np.asarray(polygon).reshape(-1, 2)
                xy = (xy - [cx, cy]) * (1 + jitter[2:]) + [cx + jitter[0] * rx, cy + jitter[1] * ry]
                polygon = xy.reshape(-1).round(2).tolist()
                if rng.rand() < 0.15:
                    category_id = int(rng.randint(1, num_classes + 1))
            else:
                scale = np.exp(rng.uniform(np.log(3.0), np.log(0.4 * min(height, width))))
                rx, ry = scale, scale * rng.uniform(0.5, 1.5)
                cx, cy = rng.uniform(0, width), rng.uniform(0, height)
                category_id = int(rng.randint(1, num_classes + 1))
                polygon = _polygon(rng, cx, cy, rx, ry, 8)
            rle = _rle_from_polygon(polygon, height, width)
            if mask_util.area(rle) < 1:
                continue
            box = [round(v, 2) for v in mask_util.toBbox(rle).tolist()]
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": box,
                    "score": round(float(rng.uniform(0.05, 1.0)), 4),
                    "segmentation": rle,
                }
            )
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, num_classes + 1)]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, results


def _uncompressed_rle(binary):
    """COCO's uncompressed RLE (column-major run lengths, starting with zeros) of a HxW mask."""
    flat = np.asfortranarray(binary).reshape(-1, order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(binary.shape), "counts": [int(c) for c in counts]}


def time_coco_eval(num_images=500, dets_per_image=100, image_size=(480, 640), seed=0, log=print):
    """Time pycocotools' COCOeval and faster-coco-eval on the same synthetic results file
    (:func:`make_synthetic_coco` with these arguments).

    Returns:
        list[dict]: per IoU type, ``iou_type``, ``num_images``, ``num_dets``, the seconds of
        ``pycocotools`` and ``faster`` (None without faster-coco-eval), their stats, and
        ``max_abs_diff`` of the 12 stats.
    """
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
