#!/usr/bin/env python
"""Parameters and FLOPs of the SA-FPN neck per mode and per efficiency lever (fvcore, CPU).

    python tools/analyze_safpn.py                  # ResNet-50 bottom-up, 800 x 1216, all variants
    python tools/analyze_safpn.py --variants "td (Detectron2 FPN)" "sa (paper, default)"

The logic is in :mod:`sa_ejhead.analysis.neck`; this prints its Markdown table (docs/safpn.md).
"""

import argparse
import logging

from sa_ejhead.analysis.neck import NECK_VARIANTS, analyze_necks, format_markdown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth of the bottom-up")
    parser.add_argument("--out-channels", type=int, default=256)
    names = [v.name for v in NECK_VARIANTS]
    parser.add_argument("--variants", nargs="+", choices=names, default=names, metavar="NAME")
    args = parser.parse_args(argv)

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    variants = [v for v in NECK_VARIANTS if v.name in args.variants]
    bottom_up, costs = analyze_necks(
        variants,
        height=args.height,
        width=args.width,
        depth=args.depth,
        out_channels=args.out_channels,
    )
    print(
        f"SA-FPN neck costs at {args.height}x{args.width}, ResNet-{args.depth} bottom-up, "
        f"{args.out_channels} channels (fvcore; 1 GFLOP = 1e9 multiply-adds)\n"
    )
    print(format_markdown(bottom_up, costs))


if __name__ == "__main__":
    main()
