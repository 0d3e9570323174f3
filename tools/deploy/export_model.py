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

The model is traced (:func:`sa_ejhead.export.export_model`) on a sample image prepared as the
config's test loader does, and checked against the eager model on that image and a 0.75x copy
(another input size). Writes ``model.ts`` or ``model.onnx`` and its metadata ``model.<ext>.json``
(with the parity check and, with ``--run-eval``, the AP); see docs/deploy.md.
"""

import argparse
import json
import logging
import os
import sys

import torch

from sa_ejhead.engine import (
    build_cpu_model,
    build_test_loader,
    config_input_format,
    load_config,
    register_datasets_from_args,
    test_augmentations,
)
from sa_ejhead.engine.args import add_coco_dataset_argument, add_debug_argument
from sa_ejhead.errors import ConfigError, run_tool
from sa_ejhead.export import (
    DEFAULT_OPSET,
    MIN_OPSET,
    ExportedModel,
    check_parity,
    export_model,
    metadata_path,
)

logger = logging.getLogger("sa_ejhead.export")


def get_parser():
    parser = argparse.ArgumentParser(
        description="Export a Detectron2 / sa-ejhead model to TorchScript or ONNX by tracing "
        "(detectron2.export.TracingAdapter; scripting and Caffe2 are not offered).",
        epilog="Example: tools/deploy/export_model.py --config-file "
        "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_SAFPN_EJHead_1x.py "
        "--checkpoint model_final.pth --sample-image input.jpg --format onnx --output out/",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help=".py or .yaml")
    parser.add_argument(
        "--checkpoint",
        default="",
        metavar="FILE",
        help="weights to export (a Detectron2 checkpoint); empty: random initialisation (seed 0) "
        "with its output layers rescaled to a trained model's ranges "
        "(projects/lab: sa_ejhead_lab.deploy.condition_random_heads), to try the tool only",
    )
    parser.add_argument(
        "--format",
        choices=["torchscript", "onnx"],
        default="torchscript",
        help="torchscript (model.ts) or onnx (model.onnx)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset (>= {MIN_OPSET}: RoiAlign's half-pixel mode)",
    )
    parser.add_argument(
        "--sample-image",
        default=None,
        metavar="FILE",
        help="image to trace with, resized by the config's test-time resize; default: the first "
        "image of the config's test dataset",
    )
    parser.add_argument(
        "--check-image",
        action="append",
        default=[],
        metavar="FILE",
        help="another image on which to compare the exported model with the eager one "
        "(repeatable; the sample image and a 0.75x copy of it are always compared)",
    )
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--run-eval",
        action="store_true",
        help="evaluate the exported model on the config's test dataset (COCO box and mask AP)",
    )
    add_debug_argument(add_coco_dataset_argument(parser))
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config overrides: key=value (LazyConfig) or KEY VALUE pairs (yacs)",
    )
    return parser


def resize_policy(cfg):
    """The config's test-time resize as recorded in the metadata, e.g.
    ``{"ResizeShortestEdge": {"short_edge_length": [800, 800], "max_size": 1333}}``."""
    policy = {}
    for aug in test_augmentations(cfg):
        fields = {k: v for k, v in vars(aug).items() if not k.startswith("_")}
        policy[type(aug).__name__] = json.loads(json.dumps(fields, default=str))
    return policy


def sample_inputs(cfg, model, sample_image=None):
    """The Detectron2 input (``image``, ``height``, ``width``) to trace with, as the config's test
    loader gives it: ``sample_image`` (a file) resized by the test augmentations, or (None) the
    first image of the test dataset."""
    import detectron2.data.transforms as T
    from detectron2.data import detection_utils

    if sample_image is None:
        return next(iter(build_test_loader(cfg)))[0]
    original = detection_utils.read_image(sample_image, format=config_input_format(cfg, model))
    aug_input = T.AugInput(original)
    T.AugmentationList(test_augmentations(cfg))(aug_input)
    image = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
    return {"image": image, "height": original.shape[0], "width": original.shape[1]}


def _other_size(inputs, factor=0.75):
    """The same image at another input size (the exported graph must not be tied to the traced
    size)."""
    from torch.nn import functional as F

    image = inputs["image"]
    size = [max(32, int(round(s * factor))) for s in image.shape[1:]]
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    return {"image": resized.round(), "height": inputs["height"], "width": inputs["width"]}


def _condition_random_heads(model, image):
    """Random weights saturate the scores (ties would decide the parity check): rescale the
    output layers with the measurement lab's conditioning (projects/lab)."""
    lab = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "projects", "lab")
    sys.path.insert(0, os.path.normpath(lab))
    from sa_ejhead_lab.deploy import condition_random_heads

    condition_random_heads(model, [image])


def evaluate(cfg, exported, output_dir):
    """COCO box and mask AP (the evaluator's results) of an exported model on the config's test
    dataset."""
    from detectron2.evaluation import inference_on_dataset, print_csv_format

    from sa_ejhead.engine import build_evaluator

    results = inference_on_dataset(
        exported, build_test_loader(cfg), build_evaluator(cfg, output_dir)
    )
    print_csv_format(results)
    return results


def main(argv=None):
    """Export; return the metadata written beside the exported model."""
    from detectron2.utils.logger import setup_logger

    args = get_parser().parse_args(argv)
    if args.format == "onnx" and args.opset < MIN_OPSET:
        raise ConfigError(
            f"--opset {args.opset}: ONNX RoiAlign has no half-pixel mode (aligned=True) before "
            f"opset {MIN_OPSET}; use --opset {MIN_OPSET} or higher"
        )
    setup_logger()  # detectron2's (the evaluation's AP table)
    setup_logger(name="sa_ejhead")
    logger.info("Command line arguments: %s", args)
    register_datasets_from_args(args)
    cfg = load_config(args.config_file, args.opts)
    model, _ = build_cpu_model(cfg, args.checkpoint)
    inputs = sample_inputs(cfg, model, args.sample_image)
    if not args.checkpoint:
        logger.warning("No --checkpoint: exporting a randomly initialised model.")
        _condition_random_heads(model, inputs["image"])

    path, metadata = export_model(
        model,
        inputs["image"],
        args.output,
        args.format,
        opset=args.opset,
        resize=resize_policy(cfg),
        extra_metadata={
            "config_file": args.config_file,
            "config_overrides": list(args.opts or []),
            "checkpoint": args.checkpoint or "none: random weights, condition_random_heads",
        },
    )
    exported = ExportedModel(path)
    checks = [inputs, _other_size(inputs)]
    checks += [sample_inputs(cfg, model, image_file) for image_file in args.check_image]
    report = check_parity(model, {args.format: exported}, checks)[args.format]
    metadata["parity_check"] = {
        "inputs": [list(x["image"].shape[1:]) for x in checks],
        **report["summary"],
    }
    logger.info("Exported %s; against eager: %s", path, metadata["parity_check"])
    if not metadata["parity_check"]["ok"]:
        logger.warning("The exported model does not match the eager model within the tolerances")

    if args.run_eval:
        if args.format == "torchscript":
            # as Detectron2's tool: no re-specialisation for every new input size
            torch._C._jit_set_bailout_depth(1)
        logger.info("Running evaluation of the exported model ...")
        metadata["evaluation"] = evaluate(cfg, exported, args.output)
    with open(metadata_path(path), "w") as f:
        json.dump(metadata, f, indent=2, default=float)
    logger.info("Wrote %s and %s", path, metadata_path(path))
    return metadata


if __name__ == "__main__":
    sys.exit(run_tool(main, debug="--debug" in sys.argv))
