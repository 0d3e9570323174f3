"""Weights shipped inside the package, and the ``sa_ejhead://`` paths that load them.

``sa_ejhead://pretrained/<file>`` names a file of ``sa_ejhead/pretrained_weights/``, as
``detectron2://ImageNetPretrained/MSRA/R-50.pkl`` names a file of Detectron2's model zoo, so a
config loads it the usual way::

    train.init_checkpoint = "sa_ejhead://pretrained/sa_shapes_R18half_pretrain.pth"

The handler checks the file's sha256 against :data:`PRETRAINED_BACKBONES` before it hands the
path to the checkpointer; a file that does not match raises an error naming the file and both
hashes, instead of loading weights that are not the ones the results were measured with.

A file whose name ends in ``.xz`` is stored xz-compressed (the ResNet-34's, which would exceed
the repository's 10 MB per weights file otherwise). The handler checks the compressed file's
sha256, decompresses it once into the cache folder (``$SA_EJHEAD_CACHE``, by default
``~/.cache/sa_ejhead``; the file's path there contains its hash) and hands out that path.
"""

import hashlib
import lzma
import os
from typing import Any, Dict, List

from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

__all__ = [
    "PRETRAINED_BACKBONES",
    "PRETRAINED_PREFIX",
    "PretrainedWeightsHandler",
    "cache_dir",
    "pretrained_path",
    "sha256_of",
]

PRETRAINED_PREFIX = "sa_ejhead://pretrained/"
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained_weights")

# file name -> sha256 of the committed file (projects/pretrain_backbone/pretrain.py writes them)
PRETRAINED_BACKBONES: Dict[str, str] = {
    # ResNet-18 at half width, BN statistics included, float16 (projects/pretrain_backbone)
    "sa_shapes_R18half_pretrain.pth": (
        "1534d8e58c159ae6aa150ebc2a485a96a2b6f75ab2f384a06e63ee1c8a29c557"
    ),
    # the ResNet-34 layout at half width, the same way; xz-compressed (10.7 MB uncompressed)
    "sa_shapes_R34half_pretrain.pth.xz": (
        "3759bbcdd70b8cb390ea5dd5b9c870eadbeac0c21078f568fc3d531906e5dd76"
    ),
}


def cache_dir() -> str:
    """Where compressed weights are decompressed: ``$SA_EJHEAD_CACHE`` or ``~/.cache/sa_ejhead``."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "sa_ejhead")
    return os.environ.get("SA_EJHEAD_CACHE") or default


def pretrained_path(name: str) -> str:
    """Local path of the shipped weights file ``name``."""
    return os.path.join(WEIGHTS_DIR, name)


def sha256_of(path: str) -> str:
    """sha256 of a (small) file, in hex."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class PretrainedWeightsHandler(PathHandler):
    """Resolve ``sa_ejhead://pretrained/<file>`` to the package's file, checked by sha256."""

    def _get_supported_prefixes(self) -> List[str]:
        return [PRETRAINED_PREFIX]

    def _get_local_path(self, path: str, **kwargs: Any) -> str:
        name = path[len(PRETRAINED_PREFIX) :]
        local = pretrained_path(name)
        if name not in PRETRAINED_BACKBONES:
            known = ", ".join(sorted(PRETRAINED_BACKBONES)) or "none"
            raise FileNotFoundError(f"{path}: unknown pretrained weights (shipped: {known})")
        if not os.path.isfile(local):
            raise FileNotFoundError(
                f"{path}: {local} is missing; reinstall sa-ejhead, or rebuild it with "
                "projects/pretrain_backbone/pretrain.py"
            )
        digest = sha256_of(local)
        if digest != PRETRAINED_BACKBONES[name]:
            raise ValueError(
                f"{local}: sha256 {digest} does not match the recorded "
                f"{PRETRAINED_BACKBONES[name]} (sa_ejhead.pretrained.PRETRAINED_BACKBONES)"
            )
        if name.endswith(".xz"):
            return _decompressed(local, digest)
        return local

    def _open(self, path: str, mode: str = "r", **kwargs: Any):
        return PathManager.open(self._get_local_path(path), mode, **kwargs)

    def _isfile(self, path: str, **kwargs: Any) -> bool:
        return os.path.isfile(pretrained_path(path[len(PRETRAINED_PREFIX) :]))


def _decompressed(path: str, digest: str) -> str:
    """The decompressed copy of the xz file ``path`` (sha256 ``digest``) in the cache, written
    atomically on first use."""
    from sa_ejhead.engine.checkpoint import atomic_write

    target = os.path.join(cache_dir(), "pretrained", digest[:16], os.path.basename(path)[:-3])
    if not os.path.isfile(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(path, "rb") as f:
            data = lzma.decompress(f.read())
        atomic_write(target, lambda f: f.write(data))
    return target


def _register():
    if PRETRAINED_PREFIX not in PathManager._path_handlers:
        PathManager.register_handler(PretrainedWeightsHandler())


_register()
