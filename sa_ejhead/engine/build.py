"""A config file of either kind (LazyConfig or yacs) with overrides, and its model on the CPU.

This is the one place that tells the two config kinds apart: the rest of the package asks these
functions (weights, device, test-time input, model) instead of testing ``isinstance(cfg,
CfgNode)`` itself.
"""

import torch
import yaml
from detectron2.config import CfgNode, instantiate
from detectron2.modeling import build_model

from .checkpoint import AtomicDetectionCheckpointer
from ..config import check_config_file, load_lazy_config, load_yacs_config


class _TagBlindLoader(yaml.SafeLoader):
    """A safe YAML loader that reads Python-object tags (which ``LazyConfig.save`` writes, e.g.
    for a ``ShapeSpec``) as None instead of refusing them: only the top-level keys matter here."""


_TagBlindLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def is_lazy_config(config_file):
    """Whether ``config_file`` is a LazyConfig (``.py``, or a ``.yaml`` saved by LazyConfig)
    rather than a yacs YAML."""
    if config_file.endswith(".py"):
        return True
    with open(config_file) as f:
        content = yaml.load(f, Loader=_TagBlindLoader) or {}
    if not isinstance(content, dict):
        raise ValueError(f"{config_file!r} is neither a LazyConfig nor a yacs config")
    return "model" in content and "MODEL" not in content and "_BASE_" not in content


def load_config(config_file, opts=None):
    """Load a LazyConfig with ``key=value`` overrides (:func:`load_lazy_config`) or a yacs config
    with ``KEY VALUE`` pairs (:func:`load_yacs_config`, not frozen), as :func:`is_lazy_config`
    tells; a :class:`~sa_ejhead.errors.ConfigError` if the file does not exist."""
    check_config_file(config_file)
    if is_lazy_config(config_file):
        return load_lazy_config(config_file, opts)
    return load_yacs_config(config_file, opts)


def is_yacs_config(cfg) -> bool:
    """Whether a loaded config is a yacs ``CfgNode`` (else a LazyConfig ``DictConfig``)."""
    return isinstance(cfg, CfgNode)


def weights_option(cfg) -> str:
    """The key that names a config's initial weights: ``MODEL.WEIGHTS`` or
    ``train.init_checkpoint``."""
    return "MODEL.WEIGHTS" if is_yacs_config(cfg) else "train.init_checkpoint"


def config_weights(cfg) -> str:
    """A config's initial weights (a path or URL; "" for none)."""
    if is_yacs_config(cfg):
        return cfg.MODEL.WEIGHTS
    return cfg.train.get("init_checkpoint", "") or ""


def set_config_weights(cfg, path: str) -> None:
    """Set a config's initial weights, in place."""
    if is_yacs_config(cfg):
        cfg.MODEL.WEIGHTS = path
    else:
        cfg.train.init_checkpoint = path


def overridden_keys(cfg, opts) -> list:
    """The keys that command-line overrides ``opts`` set: ``KEY=VALUE`` items (Hydra's ``+``,
    ``++`` and ``~`` prefixes removed) for a LazyConfig, ``KEY VALUE`` pairs for yacs."""
    opts = list(opts or [])
    if is_yacs_config(cfg):
        return opts[::2]
    return [o.split("=", 1)[0].lstrip("+~") for o in opts]


def test_augmentations(cfg) -> list:
    """The test-time augmentations (instances) of a config's test loader."""
    import detectron2.data.transforms as T

    if is_yacs_config(cfg):
        return [T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)]
    return [instantiate(a) for a in cfg.dataloader.test.mapper.augmentations]


def config_input_format(cfg, model=None) -> str:
    """The image format the model takes ("BGR", "RGB", ...), as the config's test loader reads
    images."""
    if is_yacs_config(cfg):
        return cfg.INPUT.FORMAT
    default = model.input_format if model is not None else "BGR"
    return cfg.dataloader.test.mapper.get("image_format", default)


def config_device(cfg) -> str:
    """The device a config's model runs on: ``MODEL.DEVICE``, or ``train.device`` (default
    "cuda", as the engine reads it)."""
    if is_yacs_config(cfg):
        return cfg.MODEL.DEVICE
    return cfg.train.get("device", "cuda")


def config_test_dataset(cfg):
    """The name of a config's first test dataset (``DATASETS.TEST``, or the test loader's
    ``dataset.names``), or None."""
    if is_yacs_config(cfg):
        names = cfg.DATASETS.TEST
    else:
        names = cfg.dataloader.test.dataset.get("names", None)
    if names is None or isinstance(names, str):
        return names
    return names[0] if len(names) else None


def build_test_loader(cfg, dataset_name=None):
    """The config's test data loader (yacs: :meth:`Trainer.build_test_loader` of
    ``dataset_name``, default ``DATASETS.TEST[0]``)."""
    if is_yacs_config(cfg):
        from .trainer import Trainer

        return Trainer.build_test_loader(cfg, dataset_name or cfg.DATASETS.TEST[0])
    return instantiate(cfg.dataloader.test)


def build_evaluator(cfg, output_dir=None):
    """The config's COCO evaluator: a LazyConfig's ``dataloader.evaluator``; for yacs,
    :meth:`Trainer.build_evaluator` on ``DATASETS.TEST[0]``."""
    if is_yacs_config(cfg):
        from .trainer import Trainer

        return Trainer.build_evaluator(cfg, cfg.DATASETS.TEST[0], output_dir)
    return instantiate(cfg.dataloader.evaluator)


def build_config_model(cfg, device=None):
    """The model of a config (a LazyConfig's ``model``, or the config itself if it has none; a
    yacs config's ``MODEL``), on ``device`` (default: the yacs config's ``MODEL.DEVICE``, else
    left where it is built), randomly initialised, no weights loaded."""
    if is_yacs_config(cfg):
        if device is not None:
            cfg.MODEL.DEVICE = device
        return build_model(cfg)
    model = instantiate(cfg.model if "model" in cfg else cfg)
    return model.to(device) if device is not None else model


class _RecordingCheckpointer(AtomicDetectionCheckpointer):
    """A checkpointer (a missing or unreadable file: a CheckpointError naming it) that remembers
    which model weights it did not load."""

    def load(self, path, *args, **kwargs):
        # An empty path loads nothing (fvcore returns before _load_model).
        self.missing_keys = list(self.model.state_dict().keys())
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        # missing_keys includes the tensors dropped for a shape mismatch (e.g. another num_classes)
        self.missing_keys = list(incompatible.missing_keys)
        return incompatible


def load_weights(model, path):
    """Load a checkpoint (path or URL; "" loads nothing) into ``model`` as Detectron2 does;
    return the ``state_dict`` keys left at their initial values (not in the checkpoint, or with
    another shape there)."""
    checkpointer = _RecordingCheckpointer(model)
    checkpointer.load(path)
    return checkpointer.missing_keys


def build_cpu_model(cfg, checkpoint="", seed=0):
    """Build the model of a config (a LazyConfig's ``model``, or the config itself if it has none;
    a yacs config on ``MODEL.DEVICE``) on the CPU, in eval mode, randomly initialised from
    ``seed``; then load ``checkpoint`` with :func:`load_weights` unless it is "".

    Returns:
        tuple[nn.Module, list[str]]: the model and the weights left at their initial values.
    """
    torch.manual_seed(seed)
    model = build_config_model(cfg, "cpu")
    model.eval()
    return model, (load_weights(model, checkpoint) if checkpoint else list(model.state_dict()))
