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

from detectron2.engine import launch

from sa_ejhead.engine import default_argument_parser
from sa_ejhead.errors import run_tool
from sa_ejhead.engine.lazy import main


def invoke_main():
    """Parse the command line and run :func:`sa_ejhead.engine.lazy.main` in every process."""
    args = default_argument_parser().parse_args()
    return run_tool(
        launch,
        main,
        args.num_gpus,
        args.num_machines,
        args.machine_rank,
        args.dist_url,
        (args,),
        debug=args.debug,
    )


if __name__ == "__main__":
    sys.exit(invoke_main())
