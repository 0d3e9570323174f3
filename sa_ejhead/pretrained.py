"""Weights shipped inside the package, and the ``sa_ejhead://`` paths that load them.

Two kinds, each in its own folder of the package and under its own prefix, loaded the usual way
(``train.init_checkpoint`` or ``MODEL.WEIGHTS``), as ``detectron2://`` names a file of
Detectron2's model zoo:

* ``sa_ejhead://pretrained/<file>``: pre-trained backbones (``pretrained_weights/``), their
  sha256 in :data:`PRETRAINED_BACKBONES`;
* ``sa_ejhead://model_zoo/<file>``: trained detectors (``model_zoo_weights/``), their sha256 in
  that folder's ``manifest.json`` (:func:`model_zoo_manifest`, written by ``make zoo``).

The handler checks the file's sha256 before it hands the path to the checkpointer; a file that
does not match raises an error naming the file and both hashes, instead of loading weights that
are not the ones the results were measured with.

A file whose name ends in ``.xz`` is stored xz-compressed, and may be *packed* at a reduced
precision (:func:`pack_weights`). The handler checks the compressed file's sha256, then writes
the plain checkpoint once into the cache folder (``$SA_EJHEAD_CACHE``, by default
``~/.cache/sa_ejhead``; the file's path there contains its hash) and hands out that path.
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

__all__ = [
    "MODEL_ZOO_PREFIX",
    "PRECISIONS",
    "PRETRAINED_BACKBONES",
    "PRETRAINED_PREFIX",
    "PretrainedWeightsHandler",
    "cache_dir",
    "model_zoo_manifest",
    "pack_weights",
    "pretrained_path",
    "sha256_of",
    "unpack_file",
    "unpack_weights",
]

PRETRAINED_PREFIX = "sa_ejhead://pretrained/"
MODEL_ZOO_PREFIX = "sa_ejhead://model_zoo/"
_HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS_DIR = os.path.join(_HERE, "pretrained_weights")
MODEL_ZOO_DIR = os.path.join(_HERE, "model_zoo_weights")

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

# The precisions at which weights can be shipped (pack_weights), most precise first:
# "fp32": as trained; "fp16": every floating tensor in half precision; "int8-fc": the weights of
# the linear layers (2-dimensional tensors of at least 1024 values) as 8-bit integers with one
# float32 scale per output channel (symmetric: w ~ q * scale, |q| <= 127), the other floating
# tensors in half precision; "int8": the same for the convolutions' weights too (tensors of 2 or
# more dimensions). Unpacked, int8 weights are float32 again (and loading casts every tensor to
# the model's dtype).
PRECISIONS = ("fp32", "fp16", "int8-fc", "int8")
_INT8_MIN_NUMEL = 1024


def cache_dir() -> str:
    """Where compressed weights are unpacked: ``$SA_EJHEAD_CACHE`` or ``~/.cache/sa_ejhead``."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "sa_ejhead")
    return os.environ.get("SA_EJHEAD_CACHE") or default


def pretrained_path(name: str) -> str:
    """Local path of the shipped pre-trained weights file ``name``."""
    return os.path.join(WEIGHTS_DIR, name)


def model_zoo_manifest() -> Dict[str, Dict]:
    """The model zoo's trained checkpoints: config (relative to ``configs/``) -> its record
    (``file``, ``sha256``, ``precision``, metrics, ...); empty if none is shipped."""
    path = os.path.join(MODEL_ZOO_DIR, "manifest.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def sha256_of(path: str) -> str:
    """sha256 of a (small) file, in hex."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _int8_packed(value: torch.Tensor, precision: str) -> bool:
    if not precision.startswith("int8") or not value.is_floating_point():
        return False
    dims_ok = value.dim() == 2 if precision == "int8-fc" else value.dim() >= 2
    return dims_ok and value.numel() >= _INT8_MIN_NUMEL


def pack_weights(state: Dict[str, torch.Tensor], precision: str) -> Dict[str, Any]:
    """A checkpoint (``{"model": ...}``) holding ``state`` at ``precision`` (:data:`PRECISIONS`);
    :func:`unpack_weights` reads it back."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    model, int8 = {}, {}
    for name, value in state.items():
        if _int8_packed(value, precision):
            w = value.detach().float()
            scale = w.abs().flatten(1).amax(dim=1).clamp(min=1e-12) / 127.0
            q = torch.round(w / scale.view(-1, *[1] * (w.dim() - 1))).clamp(-127, 127)
            int8[name] = {"q": q.to(torch.int8).contiguous(), "scale": scale}
        elif precision != "fp32" and value.is_floating_point():
            model[name] = value.detach().half().contiguous()
        else:
            model[name] = value.detach().contiguous()
    packed = {"model": model, "__author__": "sa_ejhead", "precision": precision}
    if int8:
        packed["int8"] = int8
    return packed


def unpack_weights(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The plain checkpoint of a :func:`pack_weights` one (``"model"`` only): int8 weights
    float32 again, the other tensors as stored; a checkpoint that was not packed is returned as
    it is."""
    if checkpoint.get("precision") is None:
        return checkpoint
    model = dict(checkpoint["model"])
    for name, packed in checkpoint.get("int8", {}).items():
        q, scale = packed["q"], packed["scale"]
        model[name] = q.float() * scale.view(-1, *[1] * (q.dim() - 1))
    return {"model": model, "__author__": checkpoint.get("__author__", "sa_ejhead")}


def _shipped_file(path: str):
    """``(local file, expected sha256, how to rebuild it)`` of an ``sa_ejhead://`` path."""
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


class PretrainedWeightsHandler(PathHandler):
    """Resolve ``sa_ejhead://pretrained/<file>`` and ``sa_ejhead://model_zoo/<file>`` to the
    package's files, checked by sha256 (and unpacked into the cache when compressed)."""

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
        if local.endswith(".xz"):
            return _unpacked(local, digest)
        return local

    def _open(self, path: str, mode: str = "r", **kwargs: Any):
        return PathManager.open(self._get_local_path(path), mode, **kwargs)

    def _isfile(self, path: str, **kwargs: Any) -> bool:
        try:
            return os.path.isfile(_shipped_file(path)[0])
        except FileNotFoundError:
            return False


def unpack_file(path: str, target: str) -> str:
    """Write the plain checkpoint of the xz file ``path`` to ``target`` (atomically): decompressed
    and, if packed at a reduced precision, unpacked (:func:`unpack_weights`); return ``target``.
    What ``sa_ejhead://`` hands to the checkpointer."""
    from sa_ejhead.engine.checkpoint import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with open(path, "rb") as f:
        data = lzma.decompress(f.read())
    checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    if checkpoint.get("precision") is not None:
        buffer = io.BytesIO()
        torch.save(unpack_weights(checkpoint), buffer)
        data = buffer.getvalue()
    atomic_write(target, lambda f: f.write(data))
    return target


def _unpacked(path: str, digest: str) -> str:
    """:func:`unpack_file` of the xz file ``path`` (sha256 ``digest``) into the cache, on first
    use."""
    target = os.path.join(cache_dir(), "pretrained", digest[:16], os.path.basename(path)[:-3])
    return target if os.path.isfile(target) else unpack_file(path, target)


def _register():
    if PRETRAINED_PREFIX not in PathManager._path_handlers:
        PathManager.register_handler(PretrainedWeightsHandler())


_register()
