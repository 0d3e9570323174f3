"""A config file of either kind (LazyConfig or yacs) with overrides, and its model on the CPU."""

import torch
import yaml
from detectron2.config import CfgNode, instantiate
from detectron2.modeling import build_model

from .checkpoint import AtomicDetectionCheckpointer
from .lazy import check_config_file, load_lazy_config
from .trainer import load_yacs_config

__all__ = ["build_cpu_model", "is_lazy_config", "load_config", "load_weights"]


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
    if isinstance(cfg, CfgNode):
        model = build_model(cfg)
    else:
        model = instantiate(cfg.model if "model" in cfg else cfg)
    model.to("cpu").eval()
    return model, (load_weights(model, checkpoint) if checkpoint else list(model.state_dict()))
