"""A checkpointer that never leaves a truncated checkpoint behind."""

import io
import lzma
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicDetectionCheckpointer", "atomic_write", "export_submodule_weights"]


def atomic_write(path, write_fn, *, binary=True):
    """Write a local file atomically: ``write_fn(f)`` into ``<path>.tmp`` (opened in binary mode
    if ``binary``), flush it to disk, then rename it to ``path``.

    A crash (or an exception raised by ``write_fn``) leaves ``path`` untouched: either the old
    file or no file, never a truncated one. The temporary file is removed on failure.
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    # Make the rename itself durable (POSIX: fsync the directory).
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def export_submodule_weights(checkpoint, dst, *, prefix, dtype=None):
    """Write the weights of one part of a trained model as a checkpoint of its own; return its
    sha256.

    Keeps the entries of the Detectron2 ``checkpoint``'s ``"model"`` whose names start with
    ``prefix`` (e.g. ``"backbone.bottom_up."``; names unchanged, so the file loads into any model
    with the same part), without BatchNorm's ``num_batches_tracked``; floating tensors are cast
    to ``dtype`` if given (``torch.float16`` halves the file). ``dst`` is written atomically, and
    xz-compressed if its name ends in ``.xz`` (``sa_ejhead://pretrained/`` reads such files).
    """
    from sa_ejhead.pretrained import sha256_of

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    part = {}
    for name, value in state.items():
        if not name.startswith(prefix) or name.endswith("num_batches_tracked"):
            continue
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        part[name] = value.contiguous()
    if not part:
        raise ValueError(f"{checkpoint}: no weights start with {prefix!r}")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    data = {"model": part, "__author__": "sa_ejhead"}
    if dst.endswith(".xz"):
        buffer = io.BytesIO()
        torch.save(data, buffer)
        packed = lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME)
        atomic_write(dst, lambda f: f.write(packed))
    else:
        atomic_write(dst, lambda f: torch.save(data, f))
    return sha256_of(dst)


def _is_local(path):
    return "://" not in path


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` whose files are written atomically (:func:`atomic_write`).

    ``last_checkpoint`` is replaced only after the checkpoint itself is in place, so a job killed
    while saving keeps a ``last_checkpoint`` that points at a complete file. Non-local save
    directories (``manifold://`` and the like) fall back to Detectron2's behaviour.
    """

    def save(self, name, **kwargs):
        # a copy of fvcore 0.1.5.post20221221 Checkpointer.save, writing through atomic_write
        if not self.save_dir or not self.save_to_disk:
            return
        if not _is_local(self.save_dir):
            return super().save(name, **kwargs)

        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = "{}.pth".format(name)
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        self.logger.info("Saving checkpoint to {}".format(save_file))
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        if not _is_local(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(save_file, lambda f: f.write(last_filename_basename), binary=False)
