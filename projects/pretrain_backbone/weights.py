"""Writing the weights that sa-ejhead ships: a trained model's weights, or a part of them, packed
at one of the package's :data:`sa_ejhead.pretrained.PRECISIONS`.

Used by ``pretrain.py`` (the pre-trained backbones) and ``projects/model_zoo/build_zoo.py`` (the
model zoo); the package only reads such files back (``sa_ejhead://``,
:func:`sa_ejhead.pretrained.unpack_file`).
"""

import io
import lzma
import os

import torch

from sa_ejhead.engine import atomic_write
from sa_ejhead.pretrained import PRECISIONS, sha256_of

__all__ = ["export_submodule_weights", "pack_weights"]

_INT8_MIN_NUMEL = 1024  # smaller weight tensors stay in half precision


def _int8_packed(value, precision):
    if not precision.startswith("int8") or not value.is_floating_point():
        return False
    dims_ok = value.dim() == 2 if precision == "int8-fc" else value.dim() >= 2
    return dims_ok and value.numel() >= _INT8_MIN_NUMEL


def pack_weights(state, precision):
    """A checkpoint (``{"model": ...}``) holding the tensors of ``state`` at ``precision``;
    :func:`sa_ejhead.pretrained.unpack_weights` reads it back."""
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


def export_submodule_weights(checkpoint, dst, *, prefix, precision="fp32"):
    """Write the weights of a trained model, or of one part of it, as a checkpoint of its own;
    return its sha256.

    Keeps the entries of the Detectron2 ``checkpoint``'s ``"model"`` whose names start with
    ``prefix`` (e.g. ``"backbone.bottom_up."``, or ``""`` for all; names unchanged, so the file
    loads into any model with the same part), without BatchNorm's ``num_batches_tracked``, at
    ``precision`` (:func:`pack_weights`). ``dst`` is written atomically, xz-compressed if its
    name ends in ``.xz``; a file that is not compressed is a plain checkpoint (fp32 or fp16 only).
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    part = {
        name: value
        for name, value in state.items()
        if name.startswith(prefix) and not name.endswith("num_batches_tracked")
    }
    if not part:
        raise ValueError(f"{checkpoint}: no weights start with {prefix!r}")
    if not dst.endswith(".xz") and precision.startswith("int8"):
        raise ValueError(f"{dst}: int8 weights are read back from an .xz file only")
    data = pack_weights(part, precision)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    if dst.endswith(".xz"):
        buffer = io.BytesIO()
        torch.save(data, buffer)
        packed = lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME)
        atomic_write(dst, lambda f: f.write(packed))
    else:
        plain = {"model": data["model"], "__author__": "sa_ejhead"}
        atomic_write(dst, lambda f: torch.save(plain, f))
    return sha256_of(dst)
