#!/usr/bin/env python3
"""``make demo``: train SA-FPN + EJ-Head on the embedded SA-Shapes data on the CPU, evaluate it
and write the checkpoint, metrics, AP table, loss curve and pictures (see sa_ejhead/demo.py).

Examples::

    .venv/bin/python tools/train_demo.py                      # the default run (output/demo/)
    .venv/bin/python tools/train_demo.py --iters 200          # shorter (make demo ITERS=200)
    .venv/bin/python tools/train_demo.py --config configs/demo/sa_shapes_baseline.py

(``tools/demo.py`` draws a trained model's predictions on your own images.)
"""

import argparse
import sys

from sa_ejhead.demo import DEFAULT_CONFIG, run_demo
from sa_ejhead.engine.args import add_debug_argument
from sa_ejhead.errors import run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="LazyConfig file, or a path under configs/"
    )
    parser.add_argument("--iters", type=int, default=None, help="training iterations")
    parser.add_argument("--output-dir", default=None, help="default: the config's train.output_dir")
    parser.add_argument("--num-vis", type=int, default=8, help="validation pictures to draw")
    parser.add_argument(
        "--threads", type=int, default=None, help="PyTorch threads (default: 1 on a busy machine)"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=14.0,
        help="minutes; without --iters, train fewer than the config's iterations if they would "
        "not fit (0: no limit)",
    )
    add_debug_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    return run_tool(
        lambda: run_demo(
            args.config,
            iters=args.iters,
            output_dir=args.output_dir,
            opts=args.opts,
            num_vis=args.num_vis,
            threads=args.threads,
            time_budget_min=args.time_budget or None,
        ),
        debug=args.debug,
        tool="train_demo",
    )


if __name__ == "__main__":
    sys.exit(main())
