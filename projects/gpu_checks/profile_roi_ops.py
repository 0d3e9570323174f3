"""Inference latency of two configs at several CPU thread counts, and the ops that take the time.

Shows which ops do not scale with ``torch.get_num_threads()`` (torchvision's CPU RoIAlign runs on
one thread; see sa_ejhead/modeling/poolers.py). Same fixed input and RoI counts as
tools/benchmark.py (800x1216, 1000 proposals, 100 detections, random weights).

    python projects/gpu_checks/profile_roi_ops.py --threads 2 4 8 16 --profile-threads 2 16
"""

import argparse
import contextlib
import io
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))
from sa_ejhead_lab.measure import fix_roi_counts, random_inputs, time_inference  # noqa: E402
from sa_ejhead_lab.specs import build_model_from_spec, parse_spec  # noqa: E402

DEFAULT_CONFIGS = [
    "base=d2://common/models/mask_rcnn_fpn.py",
    "efficient_plain=common/models/mask_rcnn_safpn_ejhead_efficient.py,"
    "model.roi_heads.threaded_pooling=False",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="benchmark specs")
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 4, 8, 16])
    parser.add_argument("--profile-threads", nargs="*", type=int, default=[2, 16])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=14, help="ops listed per profile")
    args = parser.parse_args()
    inputs = random_inputs(800, 1216)
    for text in args.configs:
        spec = parse_spec(text)
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            model = build_model_from_spec(spec)
        fix_roi_counts(model, 1000, 100)
        model.eval()
        for threads in args.threads:
            torch.set_num_threads(threads)
            latency = time_inference(model, inputs, args.runs, warmup=1)["median"]
            print(f"SCALING {spec.label} threads={threads} median={latency:.3f}s", flush=True)
        for threads in args.profile_threads:
            torch.set_num_threads(threads)
            activities = [torch.profiler.ProfilerActivity.CPU]
            with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
                model(inputs)
            print(f"PROFILE {spec.label} threads={threads}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
