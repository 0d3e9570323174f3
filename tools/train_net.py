#!/usr/bin/env python
"""Train or evaluate a yacs config with ``DefaultTrainer`` + ``COCOEvaluator``.

The config gets the sa-ejhead keys (``add_sa_ejhead_config``) before the YAML is merged.

Examples::

    tools/train_net.py --config-file configs/yacs/X.yaml --num-gpus 8
    tools/train_net.py --config-file configs/yacs/X.yaml \\
        --coco-dataset my_train=ann/train.json,images/train \\
        DATASETS.TRAIN "('my_train',)" MODEL.DEVICE cpu
    tools/train_net.py --config-file configs/yacs/X.yaml --resume OUTPUT_DIR output/X
    tools/train_net.py --config-file configs/yacs/X.yaml --eval-only MODEL.WEIGHTS model.pth
"""

import sys

from sa_ejhead.engine import launch_tool
from sa_ejhead.engine.trainer import main

if __name__ == "__main__":
    sys.exit(launch_tool(main))
