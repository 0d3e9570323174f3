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
the files; ``--debug`` shows the traceback). Without a trained Mask R-CNN checkpoint (none, or
ImageNet weights of the backbone only) a warning names the untrained parts of the model
(:func:`sa_ejhead.predictor.build_predictor`).
"""

import argparse
import glob
import logging
import os
import sys

import cv2
import sa_ejhead  # noqa: F401  (first: it keeps Detectron2's import-time warnings quiet)
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from sa_ejhead.engine.args import (
    add_coco_dataset_argument,
    add_debug_argument,
    register_datasets_from_args,
)
from sa_ejhead.errors import ImageReadError, run_tool
from sa_ejhead.predictor import build_predictor, read_image

logger = logging.getLogger("sa_ejhead.tools.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(inputs):
    """Expand ``--input`` values into image paths: without duplicates, in the order given,
    sorted within each value; FileNotFoundError for a value that matches nothing.

    A folder gives its files with an image extension (not recursive); a value containing
    ``*``, ``?`` or ``[`` is a glob; anything else must be an existing file (any extension, so
    that a misnamed or corrupt file is reported by ``read_image`` rather than ignored).
    """
    paths = []
    for value in inputs:
        if os.path.isdir(value):
            found = sorted(
                os.path.join(value, f)
                for f in os.listdir(value)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(value, f))
            )
            if not found:
                raise FileNotFoundError(f"--input {value!r}: the folder holds no image files")
        elif any(c in value for c in "*?["):
            found = sorted(p for p in glob.glob(os.path.expanduser(value)) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"--input {value!r}: the glob matches no file")
        elif os.path.isfile(value):
            found = [value]
        else:
            raise FileNotFoundError(f"--input {value!r}: no such file, folder or glob match")
        paths.extend(p for p in found if p not in paths)
    return paths


def output_paths(paths, output):
    """Where each picture goes: ``output`` itself for a single image and a file name with an
    image extension, else ``output/<input name>`` (``_1``, ``_2``... for repeated names)."""
    if len(paths) == 1 and output.lower().endswith(IMAGE_EXTENSIONS) and not os.path.isdir(output):
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        return [output]
    os.makedirs(output, exist_ok=True)
    used, ret = set(), []
    for path in paths:
        stem, ext = os.path.splitext(os.path.basename(path))
        ext = ext if ext.lower() in IMAGE_EXTENSIONS else ".png"
        name, k = stem + ext, 1
        while name in used:
            name, k = f"{stem}_{k}{ext}", k + 1
        used.add(name)
        ret.append(os.path.join(output, name))
    return ret


def draw_predictions(image, instances, metadata, confidence_threshold):
    """The BGR picture of the instances scoring at least ``confidence_threshold`` on a BGR image
    (Detectron2's ``Visualizer``), and the instances drawn."""
    instances = instances.to("cpu")
    instances = instances[instances.scores >= confidence_threshold]
    visualizer = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    picture = visualizer.draw_instance_predictions(predictions=instances).get_image()
    return picture[:, :, ::-1], instances


def draw_images(predictor, inputs, output, confidence_threshold=0.5):
    """Predict on every input image and write the pictures to ``output``.

    An image that cannot be read, or on which the predictor raises, is logged and skipped. When
    none could be processed: :class:`ImageReadError` if none could be read, else RuntimeError.

    Returns:
        tuple[list[str], list[tuple[str, str]]]: the pictures written, and ``(input path,
        error message)`` for each image that failed.
    """
    paths = expand_inputs(inputs)
    written, failures = [], []
    predict_failed = False
    for path, out_path in zip(paths, output_paths(paths, output)):
        try:
            image = read_image(path, format="BGR")
        except ImageReadError as e:
            logger.error(str(e))
            failures.append((path, str(e)))
            continue
        try:
            instances = predictor(image)["instances"]
        except Exception as e:  # a per-image failure (odd size, out of memory, ...): go on
            message = f"cannot predict on image {path!r}: {type(e).__name__}: {e}"
            # the traceback once: the same bug would otherwise repeat it for every image
            logger.error(message, exc_info=not predict_failed)
            failures.append((path, message))
            predict_failed = True
            continue
        picture, drawn = draw_predictions(
            image, instances, predictor.metadata, confidence_threshold
        )
        if not cv2.imwrite(out_path, picture):
            raise OSError(f"cannot write {out_path!r}")
        logger.info(f"{path}: {len(drawn)} instances drawn -> {out_path}")
        written.append(out_path)
    if failures and not written:
        errors = "; ".join(msg for _, msg in failures)
        if predict_failed:
            raise RuntimeError(
                f"none of the {len(paths)} input images could be read and predicted on: {errors}"
            )
        raise ImageReadError(f"none of the {len(paths)} input images could be read: {errors}")
    return written, failures


def get_parser():
    parser = argparse.ArgumentParser(
        description="Draw the predictions of a model (boxes, masks, classes, scores) on images."
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig or yacs")
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files, folders or globs ('dir/*.jpg')"
    )
    parser.add_argument(
        "--output", required=True, help="output folder (or a file name for a single image)"
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="lowest score drawn (0.5)"
    )
    add_coco_dataset_argument(parser)
    add_debug_argument(parser)
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides: 'train.init_checkpoint=model.pth' (LazyConfig) or "
        "'MODEL.WEIGHTS model.pth' (yacs)",
    )
    return parser


def main(args):
    """Exit status 1 when some images could not be drawn (when none could, an error)."""
    register_datasets_from_args(args)
    predictor = build_predictor(args.config_file, args.opts)
    written, failures = draw_images(predictor, args.input, args.output, args.confidence_threshold)
    logger.info(f"{len(written)} pictures written to {args.output}")
    if failures:
        logger.error(
            f"{len(failures)} of {len(written) + len(failures)} images could not be read or "
            "predicted on: " + ", ".join(p for p, _ in failures)
        )
        return 1
    return 0


if __name__ == "__main__":
    setup_logger()
    setup_logger(name="sa_ejhead")
    setup_logger(name="fvcore")
    args = get_parser().parse_args()
    sys.exit(run_tool(main, args, debug=args.debug))
