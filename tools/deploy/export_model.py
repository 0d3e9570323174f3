#!/usr/bin/env python
"""Export a model for deployment: TorchScript or ONNX by tracing (Detectron2's tool, for sa-ejhead).

Examples::

    # ONNX, traced on an image of your own, checked against the eager model
    tools/deploy/export_model.py --config-file \\
        configs/COCO-InstanceSegmentation/mask_rcnn_R_50_SAFPN_EJHead_efficient_1x.py \\
        --checkpoint model_final.pth --sample-image input.jpg --format onnx --output out/
    # TorchScript, then COCO box and mask AP of the exported model on the config's test set
    tools/deploy/export_model.py --config-file ... --checkpoint ... --format torchscript \\
        --output out/ --run-eval

Writes ``model.ts`` or ``model.onnx`` and its metadata ``model.<ext>.json``. The logic is in
``sa_ejhead/export/``; see docs/deploy.md.
"""

import sys

from sa_ejhead.errors import run_tool
from sa_ejhead.export.cli import main

if __name__ == "__main__":
    sys.exit(run_tool(main, debug="--debug" in sys.argv))
