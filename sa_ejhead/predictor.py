"""A predictor for a config of either kind (LazyConfig or yacs): one BGR image in, the model's
output for it out, as Detectron2's ``DefaultPredictor``.

:func:`build_predictor` loads a config file with overrides, gives a config of the model zoo its
trained weights when none are named, and warns when the checkpoint leaves parts of the model
untrained. ``tools/demo.py`` draws its predictions on images; ``tools/train_demo.py`` on the
validation images after training.
"""

import logging

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image as _d2_read_image

from .data.validation import check_image_file
from .engine import build
from .engine.lazy import check_device
from .errors import ImageReadError, describe

logger = logging.getLogger(__name__)


def read_image(path, format="BGR"):
    """Detectron2's ``read_image`` (H x W x C uint8), raising :class:`ImageReadError` naming the
    file for a missing, unreadable, truncated or non-image file, or one of a mode that Detectron2
    reads wrongly (16-bit greyscale: :func:`sa_ejhead.data.validation.check_image_file`)."""
    try:
        image = _d2_read_image(path, format=format)
        check_image_file(path)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... for broken files
        raise ImageReadError(f"cannot read image {path!r}: {describe(e)}") from e
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageReadError(f"cannot read image {path!r}: unexpected shape {image.shape}")
    return image


def _metadata(dataset_name):
    """The metadata of a dataset (class names for drawing), loading a COCO json if that is what
    sets them; empty metadata without a dataset."""
    if not dataset_name:
        return MetadataCatalog.get("__unused")
    meta = MetadataCatalog.get(dataset_name)
    if not meta.get("thing_classes") and dataset_name in DatasetCatalog.list():
        DatasetCatalog.get(dataset_name)  # loading a COCO json sets thing_classes
        meta = MetadataCatalog.get(dataset_name)
    return meta


class Predictor:
    """Detectron2's ``DefaultPredictor`` for a loaded config of either kind: the config's model
    on its device, in eval mode, with its weights (``train.init_checkpoint`` / ``MODEL.WEIGHTS``),
    resizing as its test loader does.

    Attributes:
        model: the model.
        metadata: the metadata of the config's first test dataset (class names).
        missing_weights (list[str]): the weights that the checkpoint did not have
            (:func:`sa_ejhead.engine.load_weights`).
    """

    def __init__(self, cfg):
        self.cfg = cfg
        device = check_device(build.config_device(cfg))
        self.model = build.build_config_model(cfg, str(device)).eval()
        self.missing_weights = build.load_weights(self.model, build.config_weights(cfg))
        self.aug = T.AugmentationList(build.test_augmentations(cfg))
        self.input_format = build.config_input_format(cfg, self.model)
        self.metadata = _metadata(build.config_test_dataset(cfg))

    def __call__(self, original_image):
        """H x W x 3 BGR image -> the model's output for it (``{"instances": Instances}``, in the
        image's coordinates)."""
        with torch.no_grad():
            image = original_image
            if self.input_format == "RGB":
                image = image[:, :, ::-1]
            height, width = image.shape[:2]
            aug_input = T.AugInput(image)
            self.aug(aug_input)
            image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
            return self.model([{"image": image, "height": height, "width": width}])[0]


def _weights_override(cfg, path):
    """The ``--opts`` text that sets a config's weights to ``path`` (the inverse of
    :func:`sa_ejhead.engine.overridden_keys`)."""
    return f"{build.weights_option(cfg)}{' ' if build.is_yacs_config(cfg) else '='}{path}"


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


def _warn_if_untrained(predictor):
    """Warn that the predictions come from untrained layers when the checkpoint lacked weights."""
    missing, cfg = predictor.missing_weights, predictor.cfg
    if not missing:
        return
    parts = _untrained_parts(missing)
    option, path = build.weights_option(cfg), build.config_weights(cfg)
    if not path:
        what = f"{option} is empty: the whole model has random weights"
    else:
        total = len(predictor.model.state_dict())
        what = (
            f"{option}={path!r} has no weights for {', '.join(parts)} ({len(missing)} of "
            f"{total} tensors)"
        )
    if not path or "roi_heads" in parts or "proposal_generator" in parts:
        what += ": the heads are untrained, so the pictures show meaningless predictions"
    else:
        what += ": these layers are untrained, so the predictions may be poor"
    logger.warning(
        f"{what}. Give a trained Mask R-CNN checkpoint of this model, e.g. --opts "
        f"{_weights_override(cfg, 'output/model_final.pth')} (an ImageNet checkpoint initialises "
        "the backbone only)."
    )


def _use_zoo_weights(cfg, config_file, opts):
    """Set the model zoo's trained weights (:func:`sa_ejhead.model_zoo.get_checkpoint_url`) as the
    weights of a config that has them when ``opts`` name no weights; say so in one line."""
    from . import model_zoo

    config_path = model_zoo.zoo_config_path(config_file)
    if build.weights_option(cfg) in build.overridden_keys(cfg, opts):
        return
    if config_path not in model_zoo.trained_configs():
        return
    url = model_zoo.get_checkpoint_url(config_path)
    build.set_config_weights(cfg, url)
    logger.info(
        f"No weights given: using the model zoo's trained weights {url} (docs/model_zoo.md); "
        f"pass --opts {_weights_override(cfg, 'FILE')} to use others."
    )


def build_predictor(config_file, opts=None):
    """A :class:`Predictor` for a LazyConfig or yacs config file with overrides ``opts``
    (``key=value`` / ``KEY VALUE``). A config of the model zoo that has trained weights uses them
    unless ``opts`` name others; a warning names the parts of the model that the checkpoint has
    no weights for."""
    cfg = build.load_config(config_file, opts)
    _use_zoo_weights(cfg, config_file, opts)
    predictor = Predictor(cfg)
    _warn_if_untrained(predictor)
    return predictor
