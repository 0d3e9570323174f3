#!/usr/bin/env python
"""Wall time, process CPU time (all threads) and cores used (CPU / wall) per top-level module of
one inference forward, for the cost tool's configs at its settings (800x1216, 1000 proposals, 100
detections, random weights). It shows where a model keeps fewer cores busy than another, which
fvcore's FLOPs and the per-op profile (``tools/benchmark.py --profile``) do not.

    python projects/cpu_checks/module_parallelism.py --threads 2 \
        "base=d2://common/models/mask_rcnn_fpn.py" \
        "efficient=common/models/mask_rcnn_safpn_ejhead_efficient.py"

``--no-split`` turns off ThreadedROIAlign's split (every RoIAlign in one call, as Detectron2).
Each config runs in this process one after the other: run one config per process for clean
figures (the efficient model's RoIAlign thread pool stays alive after its forward).
"""

import argparse
import contextlib
import io
import json
import os
import sys
import time

import torch

from sa_ejhead.modeling.poolers import ThreadedROIAlign

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))
from sa_ejhead_lab.measure import fix_roi_counts, random_inputs  # noqa: E402
from sa_ejhead_lab.specs import build_model_from_spec, parse_spec  # noqa: E402

MODULES = (
    "backbone.bottom_up",
    "backbone",
    "proposal_generator",
    "roi_heads",
    "roi_heads.box_pooler",
    "roi_heads.box_direct_pooler",
    "roi_heads.refinement",
    "roi_heads.box_head",
    "roi_heads.box_predictor",
    "roi_heads.mask_pooler",
    "roi_heads.mask_head",
)


@contextlib.contextmanager
def module_clocks(model, names, totals):
    """Add each named module's wall and process CPU seconds per call into ``totals``."""
    modules = dict(model.named_modules())
    handles, starts = [], {}
    for name in names:
        if name not in modules:
            continue

        def pre(_m, _i, name=name):
            starts[name] = (time.perf_counter(), time.process_time())

        def post(_m, _i, _o, name=name):
            wall0, cpu0 = starts.pop(name)
            entry = totals.setdefault(name, {"wall": 0.0, "cpu": 0.0, "calls": 0})
            entry["wall"] += time.perf_counter() - wall0
            entry["cpu"] += time.process_time() - cpu0
            entry["calls"] += 1

        handles += [
            modules[name].register_forward_pre_hook(pre),
            modules[name].register_forward_hook(post),
        ]
    try:
        yield totals
    finally:
        for h in handles:
            h.remove()


def measure(spec, runs, split=True):
    with contextlib.redirect_stdout(io.StringIO()):
        model = build_model_from_spec(parse_spec(spec))
    fix_roi_counts(model, 1000, 100, same_boxes=True)
    if not split:
        for m in model.modules():
            if isinstance(m, ThreadedROIAlign):
                m.min_rois_per_thread = 1 << 30
    inputs = random_inputs(800, 1216)
    totals = {}
    with torch.inference_mode():
        model(inputs)  # warm-up
        with module_clocks(model, MODULES, totals):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for _ in range(runs):
                model(inputs)
            total = {"wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0}
    rows = {"total": {**total, "calls": runs}, **totals}
    return {k: {**v, "wall": v["wall"] / runs, "cpu": v["cpu"] / runs} for k, v in rows.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", metavar="SPEC", help="as tools/benchmark.py")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-split", action="store_true")
    parser.add_argument("--output", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for spec in args.configs:
        rows = measure(spec, args.runs, split=not args.no_split)
        results[parse_spec(spec).label] = rows
        print(
            f"{parse_spec(spec).label} (native threads now: {len(os.listdir('/proc/self/task'))})"
        )
        for name, r in rows.items():
            cores = r["cpu"] / max(r["wall"], 1e-9)
            print(f"  {name:28s} wall {r['wall']:.3f} s  cpu {r['cpu']:.3f} s  cores {cores:.2f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"threads": args.threads, "runs": args.runs, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
