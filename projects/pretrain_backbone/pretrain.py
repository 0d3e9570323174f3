#!/usr/bin/env python3
"""Pre-train the demo backbone on sa_shapes_pretrain, then export its bottom-up weights.

    python projects/pretrain_backbone/pretrain.py            # train (resumes), then export
    python projects/pretrain_backbone/pretrain.py --export-only

Training is Detectron2's, through ``sa_ejhead.engine.do_train`` with ``resume=True``: rerunning
the command after an interruption continues from the last checkpoint in ``train.output_dir``
(every 250 iterations, written atomically). At the end, the ResNet of the trained detector
(``backbone.bottom_up.*``, nothing of the neck or the heads) is written in half precision to the
package's weights folder with its sha256 (``sa_ejhead.pretrained.PRETRAINED_BACKBONES``), where
``train.init_checkpoint = "sa_ejhead://..."`` finds it.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# depth -> (config, exported file); the ResNet-34's float16 file (10.7 MB) is stored xz-compressed
# to stay under the repository's 10 MB per weights file (sa_ejhead.pretrained reads it back)
DEPTHS = {
    18: (os.path.join(HERE, "pretrain_config.py"), "sa_shapes_R18half_pretrain.pth"),
    34: (os.path.join(HERE, "pretrain_config_r34.py"), "sa_shapes_R34half_pretrain.pth.xz"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-only", action="store_true", help="only export the weights")
    parser.add_argument(
        "--depth", type=int, choices=sorted(DEPTHS), default=18, help="ResNet layout (18 or 34)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    parser.add_argument("opts", nargs="*", help="config overrides KEY=VALUE")
    args = parser.parse_args(argv)

    import torch
    from detectron2.utils.logger import setup_logger

    from sa_ejhead.engine import do_train, load_lazy_config
    from sa_ejhead.pretrained import PRETRAINED_BACKBONES, pretrained_path
    from weights import export_submodule_weights  # this folder's (the script's own)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config, name = DEPTHS[args.depth]
    cfg = load_lazy_config(config, args.opts)
    out = cfg.train.output_dir
    os.makedirs(out, exist_ok=True)
    setup_logger(out, name="detectron2")
    setup_logger(out, name="sa_ejhead")
    if not args.export_only:
        results = do_train(cfg, resume=True)
        with open(os.path.join(out, "pretrain_eval.json"), "w") as f:
            json.dump(results, f, indent=2)
    digest = export_submodule_weights(
        os.path.join(out, "model_final.pth"),
        pretrained_path(name),
        prefix="backbone.bottom_up.",
        precision="fp16",
    )
    known = PRETRAINED_BACKBONES.get(name)
    print(f"[pretrain] wrote {pretrained_path(name)} (sha256 {digest})")
    if known != digest:
        print(f"[pretrain] update PRETRAINED_BACKBONES[{name!r}] in sa_ejhead/pretrained.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
