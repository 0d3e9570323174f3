#!/usr/bin/env python
"""Parameters and FLOPs of the EJ-Head ROI heads per setting (fvcore, CPU).

    python tools/analyze_ejhead.py                       # all settings, 1000 proposals
    python tools/analyze_ejhead.py --latency-runs 3      # also the median CPU time of the heads
    python tools/analyze_ejhead.py --variants "EJ-Head faithful (14 flatten + BR shared)"

The logic is in :mod:`sa_ejhead.analysis.head`; this prints its Markdown table (docs/ejhead.md).
"""

import argparse
import logging

import torch

from sa_ejhead.analysis.head import HEAD_VARIANTS, analyze_heads, format_markdown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--num-proposals", type=int, default=1000, help="RoIs of the box path")
    parser.add_argument("--num-detections", type=int, default=100, help="RoIs of the mask path")
    parser.add_argument("--latency-runs", type=int, default=0, help="0: no timing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    names = [v.name for v in HEAD_VARIANTS]
    parser.add_argument("--variants", nargs="+", choices=names, default=names, metavar="NAME")
    args = parser.parse_args(argv)

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in HEAD_VARIANTS if v.name in args.variants]
    costs = analyze_heads(
        variants,
        height=args.height,
        width=args.width,
        num_proposals=args.num_proposals,
        num_detections=args.num_detections,
        latency_runs=args.latency_runs,
    )
    print(
        f"EJ-Head ROI head costs: box path on {args.num_proposals} proposals, mask path on "
        f"{args.num_detections} detections, {args.height}x{args.width} image, 256 channels, "
        f"80 classes (fvcore; 1 GFLOP = 1e9 multiply-adds; CPU, {torch.get_num_threads()} "
        "threads)\n"
    )
    print(format_markdown(costs))


if __name__ == "__main__":
    main()
