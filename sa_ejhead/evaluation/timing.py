"""How long COCO evaluation takes: pycocotools' COCOeval against faster-coco-eval."""

import json
import os
import tempfile
import time

from .fast_coco import FASTER_COCO_EVAL_AVAILABLE, evaluate_coco_results
from .synthetic import make_synthetic_coco

__all__ = ["time_coco_eval"]


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
