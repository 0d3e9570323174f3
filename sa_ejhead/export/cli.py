"""The command line of ``tools/deploy/export_model.py`` (Detectron2's tool of the same name).

Exports a config's model by tracing (:func:`sa_ejhead.export.export_model`) on a sample image
prepared as the config's test loader does, checks it against the eager model on that image and a
resized copy (another input size), and with ``--run-eval`` evaluates it (COCO box and mask AP).
"""

import argparse
import json
import logging

import torch

from .measure import check_parity
from .parity import condition_random_heads, summarize_parity
from .runtime import ExportedModel
from .tracing import DEFAULT_OPSET, MIN_OPSET, export_model, metadata_path

__all__ = [
    "get_parser",
    "resize_policy",
    "sample_inputs",
    "evaluate",
    "main",
]

logger = logging.getLogger("sa_ejhead.export")


def get_parser():
    """The argument parser of ``tools/deploy/export_model.py``."""
    from sa_ejhead.engine.args import add_coco_dataset_argument, add_debug_argument

    parser = argparse.ArgumentParser(
        description="Export a Detectron2 / sa-ejhead model to TorchScript or ONNX by tracing.",
        epilog="Example: tools/deploy/export_model.py --config-file "
        "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_SAFPN_EJHead_1x.py "
        "--checkpoint model_final.pth --sample-image input.jpg --format onnx --output out/",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help=".py or .yaml")
    parser.add_argument(
        "--checkpoint",
        default="",
        metavar="FILE",
        help="weights to export (a Detectron2 checkpoint); empty: random initialisation with its "
        "output layers rescaled (sa_ejhead.export.condition_random_heads), for trying the tool",
    )
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument(
        "--export-method",
        choices=["tracing"],
        default="tracing",
        help="tracing with detectron2.export.TracingAdapter (the only method offered: "
        "Detectron2's scripting needs every module to be scriptable, caffe2_tracing a Caffe2 build)",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})"
    )
    parser.add_argument(
        "--sample-image",
        default=None,
        metavar="FILE",
        help="image to trace with; default: the first image of the config's test dataset",
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


def _test_augmentations(cfg):
    import detectron2.data.transforms as T
    from detectron2.config import CfgNode, instantiate

    if isinstance(cfg, CfgNode):
        return [T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)]
    return [instantiate(a) for a in cfg.dataloader.test.mapper.augmentations]


def _input_format(cfg, model):
    from detectron2.config import CfgNode

    if isinstance(cfg, CfgNode):
        return cfg.INPUT.FORMAT
    return cfg.dataloader.test.mapper.get("image_format", model.input_format)


def resize_policy(cfg):
    """The config's test-time resize as recorded in the metadata, e.g.
    ``{"ResizeShortestEdge": {"short_edge_length": [800, 800], "max_size": 1333}}``."""
    policy = {}
    for aug in _test_augmentations(cfg):
        fields = {k: v for k, v in vars(aug).items() if not k.startswith("_")}
        policy[type(aug).__name__] = json.loads(json.dumps(fields, default=str))
    return policy


def _test_loader(cfg):
    from detectron2.config import CfgNode, instantiate
    from detectron2.data import build_detection_test_loader

    if isinstance(cfg, CfgNode):
        return build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    return instantiate(cfg.dataloader.test)


def sample_inputs(cfg, model, sample_image=None):
    """The Detectron2 input (``image``, ``height``, ``width``) to trace with, as the config's test
    loader gives it: ``sample_image`` (a file) resized by the test augmentations, or (None) the
    first image of the test dataset."""
    import detectron2.data.transforms as T
    from detectron2.data import detection_utils

    if sample_image is None:
        return next(iter(_test_loader(cfg)))[0]
    original = detection_utils.read_image(sample_image, format=_input_format(cfg, model))
    aug_input = T.AugInput(original)
    T.AugmentationList(_test_augmentations(cfg))(aug_input)
    image = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
    return {"image": image, "height": original.shape[0], "width": original.shape[1]}


def _other_size(inputs, factor=0.75):
    """The same image at another input size (checks that the exported graph is not tied to the
    traced size)."""
    from torch.nn import functional as F

    image = inputs["image"]
    size = [max(32, int(round(s * factor))) for s in image.shape[1:]]
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    return {"image": resized.round(), "height": inputs["height"], "width": inputs["width"]}


def evaluate(cfg, exported, output_dir):
    """COCO box and mask AP (the evaluator's results) of an exported model on the config's test
    dataset."""
    from detectron2.config import CfgNode, instantiate
    from detectron2.evaluation import inference_on_dataset, print_csv_format

    from sa_ejhead.evaluation import COCOEvaluator

    if isinstance(cfg, CfgNode):
        evaluator = COCOEvaluator(cfg.DATASETS.TEST[0], output_dir=output_dir)
    else:
        evaluator = instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(exported, _test_loader(cfg), evaluator)
    print_csv_format(results)
    return results


def main(argv=None):
    """Run ``tools/deploy/export_model.py``; return the metadata written beside the exported
    model (with the parity check and, with ``--run-eval``, the evaluation results)."""
    from detectron2.config import CfgNode
    from detectron2.utils.logger import setup_logger

    from sa_ejhead.engine import build_cpu_model, load_config, register_datasets_from_args
    from sa_ejhead.errors import ConfigError

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
    if isinstance(cfg, CfgNode):
        cfg.MODEL.DEVICE = "cpu"
        cfg.DATALOADER.NUM_WORKERS = 0
    model, _ = build_cpu_model(cfg, args.checkpoint)
    inputs = sample_inputs(cfg, model, args.sample_image)
    if not args.checkpoint:
        logger.warning("No --checkpoint: exporting a randomly initialised model.")
        # random weights saturate the scores (ties would decide the parity check): rescale the
        # output layers to a trained model's ranges; the exported model only serves to try the tool
        condition_random_heads(model, [inputs["image"]])

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
        **summarize_parity(report["images"]),
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
