#!/usr/bin/env python
"""Draw a model's predictions (boxes, masks, class names, scores) on images.

Examples::

    tools/demo.py --config-file configs/X.py --input photo.jpg --output out.jpg \\
        --opts train.init_checkpoint=output/model_final.pth train.device=cpu
    tools/demo.py --config-file configs/yacs/X.yaml --input 'images/*.png' --output vis/ \\
        --confidence-threshold 0.7 --opts MODEL.WEIGHTS output/model_final.pth MODEL.DEVICE cpu

A config of the model zoo that has trained weights (``configs/demo/sa_shapes.py``) uses them
when ``--opts`` name no weights (docs/model_zoo.md)::

    tools/demo.py --config-file configs/demo/sa_shapes.py \\
        --input docs/images/sa_shapes_val_000007.png --output vis/

Images that cannot be read or predicted on are reported (with their path) and skipped; the exit
status is 1 when any image failed, and the run fails outright only when all did (one line names
the files; ``--debug`` shows the traceback). Without a
trained Mask R-CNN checkpoint (none, or ImageNet weights of the backbone only) a warning names
the untrained parts of the model.
"""

import sys

from detectron2.utils.logger import setup_logger

from sa_ejhead.errors import run_tool
from sa_ejhead.visualize import demo_main, get_demo_parser

if __name__ == "__main__":
    setup_logger()
    setup_logger(name="sa_ejhead")
    setup_logger(name="fvcore")
    args = get_demo_parser().parse_args()
    sys.exit(run_tool(demo_main, args, debug=args.debug))
