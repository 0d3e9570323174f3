"""Predictions drawn on images: the library behind ``tools/demo.py``.

Images in (files, folders, globs), Detectron2 ``Visualizer`` pictures out, for LazyConfig and
yacs configs. An image that cannot be read or predicted on is reported and skipped
(:func:`draw_images`). :func:`draw_predictions` is the one drawing function (``make demo`` uses it
too). A checkpoint that lacks weights of the model gets a warning naming the untrained parts.
"""

import argparse
import glob
import logging
import os

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image as _d2_read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer

from sa_ejhead.engine.args import (
    add_coco_dataset_argument,
    add_debug_argument,
    register_datasets_from_args,
)
from sa_ejhead.data.validation import check_image_file
from sa_ejhead.engine import check_device, load_config, load_weights
from sa_ejhead.errors import SAEJHeadError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "LazyPredictor",
    "build_predictor",
    "demo_main",
    "draw_images",
    "draw_predictions",
    "expand_inputs",
    "first_test_dataset",
    "get_demo_parser",
    "read_image",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_GLOB_CHARS = "*?["


class ImageReadError(SAEJHeadError, IOError):
    """An input image that cannot be opened or decoded; the message names the file."""


def read_image(path, format="BGR"):
    """Detectron2's ``read_image`` (H x W x C uint8), raising :class:`ImageReadError` naming the
    file for a missing, unreadable, truncated or non-image file, or one of a mode that Detectron2
    reads wrongly (16-bit greyscale: :func:`sa_ejhead.data.validation.check_image_file`)."""
    try:
        image = _d2_read_image(path, format=format)
        check_image_file(path)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... for broken files
        raise ImageReadError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from e
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageReadError(f"cannot read image {path!r}: unexpected shape {image.shape}")
    return image


def expand_inputs(inputs):
    """Expand ``--input`` values into image paths: without duplicates, in the order given,
    sorted within each value; FileNotFoundError for a value that matches nothing.

    A folder gives its files with an image extension (not recursive); a value containing
    ``*``, ``?`` or ``[`` is a glob; anything else must be an existing file (any extension, so
    that a misnamed or corrupt file is reported by :func:`read_image` rather than ignored).
    """
    if isinstance(inputs, str):
        inputs = [inputs]
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
        elif any(c in value for c in _GLOB_CHARS):
            found = sorted(p for p in glob.glob(os.path.expanduser(value)) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"--input {value!r}: the glob matches no file")
        elif os.path.isfile(value):
            found = [value]
        else:
            raise FileNotFoundError(f"--input {value!r}: no such file, folder or glob match")
        paths.extend(p for p in found if p not in paths)
    return paths


def first_test_dataset(cfg):
    """The first dataset of a LazyConfig's ``dataloader.test``, or None."""
    names = cfg.dataloader.test.dataset.get("names", None)
    if names is not None and not isinstance(names, str):
        names = names[0] if len(names) else None
    return names


def _metadata(dataset_name):
    if not dataset_name:
        return MetadataCatalog.get("__unused")
    meta = MetadataCatalog.get(dataset_name)
    if not meta.get("thing_classes") and dataset_name in DatasetCatalog.list():
        DatasetCatalog.get(dataset_name)  # loading a COCO json sets thing_classes
        meta = MetadataCatalog.get(dataset_name)
    return meta


def _untrained_parts(missing_keys):
    """``roi_heads``, ``proposal_generator``, ``backbone.bottom_up``, ``backbone (neck)``..."""
    parts = []
    for key in missing_keys:
        first, _, rest = key.partition(".")
        if first == "backbone" and rest:
            part = "backbone.bottom_up" if rest.startswith("bottom_up.") else "backbone (neck)"
        else:
            part = first
        if part not in parts:
            parts.append(part)
    return parts


def _warn_if_untrained(model, missing_keys, option, path):
    """Warn that the predictions come from untrained layers when the checkpoint (``path``, set by
    the config ``option``) lacked weights (``missing_keys``, from :func:`load_weights`).

    Returns:
        list[str]: the untrained parts (empty when the checkpoint had every weight).
    """
    if not missing_keys:
        return []
    parts = _untrained_parts(missing_keys)
    if not path:
        what = f"{option} is empty: the whole model has random weights"
    else:
        total = len(model.state_dict())
        what = (
            f"{option}={path!r} has no weights for {', '.join(parts)} ({len(missing_keys)} of "
            f"{total} tensors)"
        )
    if not path or "roi_heads" in parts or "proposal_generator" in parts:
        what += ": the heads are untrained, so the pictures show meaningless predictions"
    else:
        what += ": these layers are untrained, so the predictions may be poor"
    example = (
        "train.init_checkpoint=output/model_final.pth"
        if option.startswith("train.")
        else "MODEL.WEIGHTS output/model_final.pth"
    )
    logger.warning(
        f"{what}. Give a trained Mask R-CNN checkpoint of this model, e.g. --opts {example} "
        "(an ImageNet checkpoint initialises the backbone only)."
    )
    return parts


class LazyPredictor:
    """:class:`detectron2.engine.DefaultPredictor` for a LazyConfig (``model``, ``train``,
    ``dataloader.test``): loads ``train.init_checkpoint``, resizes as the test mapper's
    ``augmentations``, takes one BGR image per call. ``missing_weights``: as :func:`load_weights`.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        device = check_device(cfg.train.get("device", "cuda"))
        self.model = instantiate(cfg.model).to(device).eval()
        self.missing_weights = load_weights(self.model, cfg.train.init_checkpoint)
        mapper = cfg.dataloader.test.mapper
        self.aug = T.AugmentationList(list(instantiate(mapper.get("augmentations", []))))
        self.input_format = mapper.get("image_format", "BGR")
        self.metadata = _metadata(first_test_dataset(cfg))

    def __call__(self, original_image):
        """H x W x 3 BGR image -> the model's output for it (``{"instances": Instances}``)."""
        with torch.no_grad():
            image = original_image
            if self.input_format == "RGB":
                image = image[:, :, ::-1]
            height, width = image.shape[:2]
            aug_input = T.AugInput(image)
            self.aug(aug_input)
            image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
            return self.model([{"image": image, "height": height, "width": width}])[0]


def _use_zoo_weights(cfg, config_file, opts):
    """Set the model zoo's trained weights (:func:`sa_ejhead.model_zoo.get_checkpoint_url`) as the
    weights of a config that has them when ``opts`` name no weights; say so in one line."""
    from sa_ejhead import model_zoo

    lazy = not isinstance(cfg, CfgNode)
    option = "train.init_checkpoint" if lazy else "MODEL.WEIGHTS"
    keys = [o.split("=", 1)[0].lstrip("+") for o in opts or []] if lazy else (opts or [])[::2]
    config_path = model_zoo.zoo_config_path(config_file)
    if option in keys or config_path not in model_zoo.trained_configs():
        return
    url = model_zoo.get_checkpoint_url(config_path)
    if lazy:
        cfg.train.init_checkpoint = url
    else:
        cfg.MODEL.WEIGHTS = url
    logger.info(
        f"No weights given: using the model zoo's trained weights {url} (docs/model_zoo.md); "
        f"pass --opts {option}{'=' if lazy else ' '}FILE to use others."
    )


def build_predictor(config_file, opts=None):
    """A predictor for a LazyConfig or yacs config file with overrides ``opts``; a config of the
    model zoo that has trained weights uses them unless ``opts`` give others.

    Returns:
        callable: BGR image -> ``{"instances": ...}`` (a :class:`LazyPredictor`, or Detectron2's
        ``DefaultPredictor`` for yacs), with ``metadata`` and ``missing_weights`` attributes; a
        warning names the parts of the model that the checkpoint has no weights for.
    """
    cfg = load_config(config_file, opts)
    _use_zoo_weights(cfg, config_file, opts)
    if not isinstance(cfg, CfgNode):
        predictor = LazyPredictor(cfg)
        option, path = "train.init_checkpoint", cfg.train.get("init_checkpoint") or ""
    else:
        check_device(cfg.MODEL.DEVICE)
        option, path = "MODEL.WEIGHTS", cfg.MODEL.WEIGHTS
        cfg.MODEL.WEIGHTS = ""  # DefaultPredictor loads nothing; load_weights does
        cfg.freeze()
        predictor = DefaultPredictor(cfg)
        predictor.missing_weights = load_weights(predictor.model, path)
        predictor.metadata = _metadata(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None)
    _warn_if_untrained(predictor.model, predictor.missing_weights, option, path)
    return predictor


def draw_predictions(
    image, instances, metadata, confidence_threshold=0.5, *, scale=1.0, mode=ColorMode.IMAGE
):
    """Draw the instances (in the image's coordinates) scoring at least ``confidence_threshold``
    on a BGR image with Detectron2's ``Visualizer`` (``scale``, colour ``mode``).

    Returns:
        tuple[np.ndarray, Instances]: the BGR picture and the instances drawn.
    """
    instances = instances.to("cpu")
    instances = instances[instances.scores >= confidence_threshold]
    visualizer = Visualizer(image[:, :, ::-1], metadata, scale=scale, instance_mode=mode)
    picture = visualizer.draw_instance_predictions(predictions=instances).get_image()
    return picture[:, :, ::-1], instances


def _output_paths(paths, output):
    single_file = len(paths) == 1 and output.lower().endswith(IMAGE_EXTENSIONS)
    if single_file and not os.path.isdir(output):
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
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


def draw_images(predictor, inputs, output, confidence_threshold=0.5):
    """Predict on every input image (:func:`expand_inputs`) and write the pictures to
    ``output``, a folder or, for a single image, a file name.

    An image that cannot be read, or on which the predictor raises, is logged and skipped. When
    none could be processed: :class:`ImageReadError` if none could be read, else RuntimeError.

    Returns:
        tuple[list[str], list[tuple[str, str]]]: the pictures written, and ``(input path,
        error message)`` for each image that failed.
    """
    paths = expand_inputs(inputs)
    written, failures = [], []
    predict_failed = False
    for path, out_path in zip(paths, _output_paths(paths, output)):
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


def get_demo_parser():
    """The command-line parser of ``tools/demo.py``."""
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


def demo_main(args):
    """Run ``tools/demo.py``; exit status 1 when some images could not be drawn (when none
    could, :func:`draw_images` raises)."""
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
