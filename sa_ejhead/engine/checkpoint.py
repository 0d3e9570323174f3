"""A checkpointer that never leaves a truncated checkpoint behind."""

import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicDetectionCheckpointer", "atomic_write", "export_submodule_weights"]


def atomic_write(path, write_fn, *, binary=True):
    """Write a file atomically: write ``<path>.tmp``, flush it to disk, then rename it to ``path``.

    A crash (or an exception raised by ``write_fn``) leaves ``path`` untouched: either the old
    file or no file, never a truncated one. The temporary file is removed on failure.

    Args:
        path (str): local path of the file to write.
        write_fn (callable): called as ``write_fn(f)`` with the open temporary file.
        binary (bool): open the temporary file in binary mode.
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
    """Write the weights of one part of a trained model as a checkpoint of its own.

    Keeps the entries of ``checkpoint["model"]`` whose names start with ``prefix`` (names
    unchanged, so the file loads into any model that has the same part, e.g. every detector with
    the same ``backbone.bottom_up``), without BatchNorm's ``num_batches_tracked``; floating
    tensors are cast to ``dtype`` if given. The file is written atomically.

    Args:
        checkpoint (str): a Detectron2 checkpoint (``{"model": state_dict, ...}``).
        dst (str): the file to write.
        prefix (str): e.g. ``"backbone.bottom_up."``.
        dtype (torch.dtype or None): e.g. ``torch.float16`` to halve the file.

    Returns:
        str: the sha256 of the written file.
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
    atomic_write(dst, _TorchSave({"model": part, "__author__": "sa_ejhead"}))
    return sha256_of(dst)


def _is_local(path):
    return "://" not in path


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` whose files are written atomically.

    ``save("model_0004999")`` writes ``model_0004999.pth.tmp`` and renames it to
    ``model_0004999.pth`` only once it is complete; ``last_checkpoint`` is replaced the same way
    and only after the checkpoint itself is in place. A job killed while saving therefore keeps
    its previous ``last_checkpoint``, which still points at a complete file, and ``--resume``
    continues from it. Non-local save directories (``manifold://`` and the like) fall back to
    Detectron2's behaviour.
    """

    def save(self, name, **kwargs):
        """Dump the model and the checkpointables to ``<save_dir>/<name>.pth``, atomically.

        Args:
            name (str): file name without the ``.pth`` extension.
            kwargs: extra data to save, as in :meth:`fvcore.common.checkpoint.Checkpointer.save`.
        """
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
        atomic_write(save_file, _TorchSave(data))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        """Point ``<save_dir>/last_checkpoint`` at ``last_filename_basename``, atomically.

        Args:
            last_filename_basename (str): basename of the checkpoint file.
        """
        if not _is_local(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(save_file, _TextWrite(last_filename_basename), binary=False)


class _TorchSave:
    """``torch.save(data, f)`` as a picklable callable."""

    def __init__(self, data):
        self.data = data

    def __call__(self, f):
        torch.save(self.data, f)


class _TextWrite:
    """``f.write(text)`` as a picklable callable."""

    def __init__(self, text):
        self.text = text

    def __call__(self, f):
        f.write(self.text)
