#!/usr/bin/env python
"""Where one config's inference peak RSS is reached, and how much freed memory the allocator
keeps between forwards, at the cost tool's settings (800x1216, 1000 proposals, 100 detections,
random weights, the same boxes for every config).

    python projects/cpu_checks/inference_rss_trace.py --threads 2 \
        "common/models/mask_rcnn_safpn_ejhead_efficient.py"
    python projects/cpu_checks/inference_rss_trace.py --threads 2 \
        "common/models/mask_rcnn_safpn_ejhead_efficient.py,model.roi_heads.threaded_inference_pooling=True"

One config per process (RSS is the process's). For each of ``--calls`` forwards it prints the
RSS at the start of the call (what the allocator kept of the previous one: every tensor of the
forward has been freed by then) and the peak RSS, both above the RSS after the model was built
(as ``tools/benchmark.py``'s "peak RSS"); for each call that raised the peak, the modules (top
level, the backbone's stages, the ROI heads' parts) after which the peak had grown. glibc keeps
freed memory differently from process to process: run a config several times before comparing
(docs/benchmark.md).
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))
from sa_ejhead_lab.measure import (  # noqa: E402
    _measured_model,
    _peak_rss_bytes,
    _rss_bytes,
    random_inputs,
)
from sa_ejhead_lab.specs import parse_spec  # noqa: E402


def _mib(x):
    return round(x / 2**20)


def _traced(name):
    return bool(name) and (
        name.count(".") <= 1
        or (name.startswith("backbone.bottom_up.res") and name.count(".") <= 2)
        or (name.startswith("roi_heads.") and name.count(".") <= 2)
    )


def trace(spec, calls=4, threads=2, size=(800, 1216)):
    """Returns one dict per call: ``start`` and ``peak`` (MiB above the built model's RSS) and
    ``steps``, the (module event, RSS, peak) where the peak grew."""
    # built as tools/benchmark.py builds it: the thread count, fixed RoI counts, the same boxes
    options = {"threads": threads, "proposals": 1000, "detections": 100}
    model = _measured_model(parse_spec(spec), options).eval()
    inputs = random_inputs(*size)
    log = []

    def hook(event):
        def record(*_):
            log.append((event, _rss_bytes(), _peak_rss_bytes()))

        return record

    for name, module in model.named_modules():
        if _traced(name):
            module.register_forward_pre_hook(hook(name + " <"))
            module.register_forward_hook(hook(name + " >"))
    rss0 = _rss_bytes()
    out = []
    with torch.no_grad():
        for _ in range(calls):
            log.clear()
            start, peak0 = _rss_bytes(), _peak_rss_bytes()
            model(inputs)
            steps, last = [], peak0
            for event, rss, peak in log:
                if peak > last:
                    steps.append((event, _mib(rss - rss0), _mib(peak - rss0)))
                last = peak
            out.append(
                {
                    "start": _mib(start - rss0),
                    "peak": _mib(_peak_rss_bytes() - rss0),
                    "steps": steps,
                }
            )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="[LABEL=]SOURCE[,KEY=VALUE...], as tools/benchmark.py")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=4)
    args = parser.parse_args()
    for i, call in enumerate(trace(args.spec, args.calls, args.threads)):
        print(f"call {i}: RSS at start {call['start']} MiB, peak {call['peak']} MiB")
        for event, rss, peak in call["steps"]:
            print(f"    {event:45s} RSS {rss:5d}  peak {peak:5d}")


if __name__ == "__main__":
    main()
