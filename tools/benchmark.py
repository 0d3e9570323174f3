#!/usr/bin/env python
"""Cost of detection configs vs the first one: parameters, FLOPs, latency, train step, memory.

Example (the README's cost table)::

    python tools/benchmark.py --configs \\
        "Mask R-CNN R50-FPN=d2://common/models/mask_rcnn_fpn.py" \\
        "SA-FPN + EJ-Head=common/models/mask_rcnn_safpn_ejhead.py" \\
        "efficient=common/models/mask_rcnn_safpn_ejhead_efficient.py"

``python tools/benchmark.py --coco-eval`` times pycocotools' COCOeval against faster-coco-eval.
See ``sa_ejhead/analysis/benchmark.py`` for what is measured and how; ``--help`` for the options.
"""

import logging

from sa_ejhead.analysis.benchmark import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
