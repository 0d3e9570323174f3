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

from detectron2.engine import launch

from sa_ejhead.engine import default_argument_parser
from sa_ejhead.errors import run_tool
from sa_ejhead.engine.trainer import main


def invoke_main():
    """Parse the command line and run :func:`sa_ejhead.engine.trainer.main` in every process."""
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
