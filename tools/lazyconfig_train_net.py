#!/usr/bin/env python
"""Train or evaluate a LazyConfig model (Detectron2's ``tools/lazyconfig_train_net.py``).

Examples::

    # train on the CPU, with a COCO-format dataset of your own
    tools/lazyconfig_train_net.py --config-file configs/COCO-InstanceSegmentation/X.py \\
        --coco-dataset my_train=ann/train.json,images/train \\
        --coco-dataset my_val=ann/val.json,images/val \\
        dataloader.train.dataset.names=my_train dataloader.test.dataset.names=my_val \\
        train.device=cpu
    # continue an interrupted run
    tools/lazyconfig_train_net.py --config-file ... --resume train.output_dir=output/X
    # evaluate
    tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=model.pth
    # 8 GPUs, or 2 CPU processes (gloo)
    tools/lazyconfig_train_net.py --config-file ... --num-gpus 8
"""

import sys

from sa_ejhead.engine import launch_tool
from sa_ejhead.engine.lazy import main

if __name__ == "__main__":
    sys.exit(launch_tool(main))
