"""Weights shipped inside the package, and the ``sa_ejhead://`` paths that load them (as
``train.init_checkpoint`` or ``MODEL.WEIGHTS``):

* ``sa_ejhead://pretrained/<file>``: pre-trained backbones (``pretrained_weights/``), their
  sha256 in :data:`PRETRAINED_BACKBONES`;
* ``sa_ejhead://model_zoo/<file>``: trained detectors (``model_zoo_weights/``), their sha256 in
  :func:`model_zoo_manifest`.

A file whose sha256 is not the recorded one is refused. A ``.xz`` file (possibly packed at a
reduced precision, :data:`PRECISIONS`) is unpacked once into the cache and that path handed out.
"""

import hashlib
import io
import json
import lzma
import os
from typing import Any, Dict, List

import torch
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

PRETRAINED_PREFIX = "sa_ejhead://pretrained/"
MODEL_ZOO_PREFIX = "sa_ejhead://model_zoo/"
_HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS_DIR = os.path.join(_HERE, "pretrained_weights")
MODEL_ZOO_DIR = os.path.join(_HERE, "model_zoo_weights")

# file name -> sha256 of the committed file (projects/pretrain_backbone/pretrain.py writes them)
PRETRAINED_BACKBONES: Dict[str, str] = {
    # ResNet-18 at half width, BN statistics included, float16
    "sa_shapes_R18half_pretrain.pth": (
        "1534d8e58c159ae6aa150ebc2a485a96a2b6f75ab2f384a06e63ee1c8a29c557"
    ),
    # the ResNet-34 layout at half width, the same way; xz-compressed
    "sa_shapes_R34half_pretrain.pth.xz": (
        "3759bbcdd70b8cb390ea5dd5b9c870eadbeac0c21078f568fc3d531906e5dd76"
    ),
}

# The precisions at which weights are shipped, most precise first: "fp32": as trained; "fp16":
# every floating tensor in half precision; "int8-fc": the linear layers' weights (2-dimensional,
# at least 1024 values) as int8 with one float32 scale per output channel (w ~ q * scale, in the
# checkpoint's "int8" entry), the other floating tensors in half precision; "int8": the same for
# the convolutions' weights too.
PRECISIONS = ("fp32", "fp16", "int8-fc", "int8")


def pretrained_path(name: str) -> str:
    """Local path of the shipped pre-trained weights file ``name``."""
    return os.path.join(WEIGHTS_DIR, name)


def model_zoo_manifest() -> Dict[str, Dict]:
    """The model zoo's trained checkpoints (``manifest.json``, written by ``make zoo``): config
    (relative to ``configs/``) -> its record (``file``, ``sha256``, ``precision``, metrics, ...);
    empty if none is shipped."""
    path = os.path.join(MODEL_ZOO_DIR, "manifest.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def sha256_of(path: str) -> str:
    """sha256 of a (small) file, in hex."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def unpack_weights(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The plain checkpoint (``"model"`` only) of one packed at a reduced precision: int8 weights
    float32 again, the other tensors as stored; a checkpoint not packed is returned as it is."""
    if checkpoint.get("precision") is None:
        return checkpoint
    model = dict(checkpoint["model"])
    for name, packed in checkpoint.get("int8", {}).items():
        q, scale = packed["q"], packed["scale"]
        model[name] = q.float() * scale.view(-1, *[1] * (q.dim() - 1))
    return {"model": model, "__author__": checkpoint.get("__author__", "sa_ejhead")}


def _shipped_file(path: str):
    """``(local file, expected sha256)`` of an ``sa_ejhead://`` path."""
    if path.startswith(MODEL_ZOO_PREFIX):
        name = path[len(MODEL_ZOO_PREFIX) :]
        known = {e["file"]: e["sha256"] for e in model_zoo_manifest().values()}
        folder, kind, rebuild = MODEL_ZOO_DIR, "model zoo weights", "`make zoo`"
    else:
        name = path[len(PRETRAINED_PREFIX) :]
        known = PRETRAINED_BACKBONES
        folder, kind = WEIGHTS_DIR, "pretrained weights"
        rebuild = "projects/pretrain_backbone/pretrain.py"
    if name not in known:
        shipped = ", ".join(sorted(known)) or "none"
        raise FileNotFoundError(f"{path}: unknown {kind} (shipped: {shipped})")
    local = os.path.join(folder, name)
    if not os.path.isfile(local):
        raise FileNotFoundError(
            f"{path}: {local} is missing; reinstall sa-ejhead, or rebuild it with {rebuild}"
        )
    return local, known[name]


class _WeightsHandler(PathHandler):
    """Resolves ``sa_ejhead://`` paths to the package's files, checked by sha256; an xz file to
    its plain checkpoint in ``$SA_EJHEAD_CACHE`` (default ``~/.cache/sa_ejhead``), under its
    hash, unpacked on first use."""

    def _get_supported_prefixes(self) -> List[str]:
        return [PRETRAINED_PREFIX, MODEL_ZOO_PREFIX]

    def _get_local_path(self, path: str, **kwargs: Any) -> str:
        local, expected = _shipped_file(path)
        digest = sha256_of(local)
        if digest != expected:
            raise ValueError(
                f"{local}: sha256 {digest} does not match the recorded {expected} (sa_ejhead."
                "pretrained.PRETRAINED_BACKBONES, or the model zoo's manifest.json)"
            )
        if not local.endswith(".xz"):
            return local
        cache = os.environ.get("SA_EJHEAD_CACHE") or os.path.expanduser("~/.cache/sa_ejhead")
        target = os.path.join(cache, "pretrained", digest[:16], os.path.basename(local)[:-3])
        return target if os.path.isfile(target) else unpack_file(local, target)


def unpack_file(path: str, target: str) -> str:
    """Write the plain checkpoint of the xz file ``path`` to ``target`` (atomically): decompressed
    and, if packed at a reduced precision, unpacked (:func:`unpack_weights`); return ``target``."""
    from sa_ejhead.engine.checkpoint import atomic_open

    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with open(path, "rb") as f:
        data = lzma.decompress(f.read())
    checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    with atomic_open(target) as f:
        if checkpoint.get("precision") is None:
            f.write(data)
        else:
            torch.save(unpack_weights(checkpoint), f)
    return target


if PRETRAINED_PREFIX not in PathManager._path_handlers:
    PathManager.register_handler(_WeightsHandler())
