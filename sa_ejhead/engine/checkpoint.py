"""A checkpointer that never leaves a truncated checkpoint behind, and resumes from the newest
complete one."""

import errno
import io
import logging
import lzma
import os
import re
import shutil

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..errors import CheckpointError, DiskFullError, describe

__all__ = [
    "AtomicDetectionCheckpointer",
    "atomic_write",
    "check_checkpoint_path",
    "export_submodule_weights",
]

logger = logging.getLogger(__name__)

# A folder with less free space than this when a write fails is full (the write that failed may
# have been a small one).
_FULL_BELOW = 1 << 20


def _no_space_left(error, folder):
    """Whether ``error`` was a full disk: ENOSPC or EDQUOT on it, or on an error it was raised from
    or while handling (``torch.save`` turns the failed write into a RuntimeError), or almost no
    space left in ``folder``."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    try:
        return shutil.disk_usage(folder).free < _FULL_BELOW
    except OSError:
        return False


def atomic_write(path, write_fn, *, binary=True):
    """Write a local file atomically: ``write_fn(f)`` into ``<path>.tmp`` (opened in binary mode
    if ``binary``), flush it to disk, then rename it to ``path``.

    A crash (or an exception raised by ``write_fn``) leaves ``path`` untouched: either the old
    file or no file, never a truncated one. The temporary file is removed on failure. A full disk
    raises :class:`~sa_ejhead.errors.DiskFullError` naming the folder.
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        folder = os.path.dirname(os.path.abspath(path))
        full = isinstance(e, Exception) and _no_space_left(e, folder)
        if os.path.lexists(tmp):
            os.remove(tmp)
        if full:
            free = shutil.disk_usage(folder).free / 2**20
            raise DiskFullError(
                f"no space left on the device of {folder} while writing {os.path.basename(path)} "
                f"({free:.0f} MiB free once its partial copy was removed; nothing written before "
                "is lost): free some space, or choose another output folder, and rerun (with "
                "--resume to continue a training)"
            ) from e
        raise
    # Make the rename itself durable (POSIX: fsync the directory).
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def export_submodule_weights(checkpoint, dst, *, prefix, precision="fp32"):
    """Write the weights of a trained model, or of one part of it, as a checkpoint of its own;
    return its sha256.

    Keeps the entries of the Detectron2 ``checkpoint``'s ``"model"`` whose names start with
    ``prefix`` (e.g. ``"backbone.bottom_up."``, or ``""`` for all; names unchanged, so the file
    loads into any model with the same part), without BatchNorm's ``num_batches_tracked``, at
    ``precision`` (:data:`sa_ejhead.pretrained.PRECISIONS`: ``"fp16"`` halves the file).
    ``dst`` is written atomically, and xz-compressed if its name ends in ``.xz``
    (``sa_ejhead://`` paths read such files back). A reduced-precision file that is not
    compressed holds half-precision tensors only (the int8 precisions need ``.xz``).
    """
    from sa_ejhead.pretrained import pack_weights, sha256_of

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
    if not dst.endswith(".xz"):  # a plain checkpoint, loadable as it is
        data = {"model": data["model"], "__author__": "sa_ejhead"}
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
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


def check_checkpoint_path(path, key, resume_dir=None):
    """Raise :class:`~sa_ejhead.errors.CheckpointError` naming the config ``key`` (e.g.
    ``"train.init_checkpoint"``) if ``path`` is a local file name that does not exist: before the
    model is built. "" (no checkpoint) and URLs (``detectron2://``, ``sa_ejhead://``, ...) pass,
    and so does any ``path`` when ``resume_dir`` has a ``last_checkpoint``: ``resume_or_load``
    resumes from it without reading ``path``."""
    if resume_dir and os.path.isfile(os.path.join(resume_dir, "last_checkpoint")):
        return
    if path and _is_local(path) and not os.path.isfile(path):
        raise CheckpointError(f"{key}={path!r}: no such checkpoint file")


_ITERATION = re.compile(r"_(\d+)\.pth$")


def _iteration_of(path):
    """The iteration in a checkpoint's name (``model_0000999.pth``: 999); others (``model_final``)
    count as the last."""
    match = _ITERATION.search(os.path.basename(path))
    return int(match.group(1)) if match else float("inf")


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` whose files are written atomically (:func:`atomic_write`),
    and that resumes from the newest complete checkpoint.

    ``last_checkpoint`` is replaced only after the checkpoint itself is in place, so a job killed
    while saving keeps a ``last_checkpoint`` that points at a complete file. Non-local save
    directories (``manifold://`` and the like) fall back to Detectron2's behaviour.

    A checkpoint that does not exist or cannot be read raises
    :class:`~sa_ejhead.errors.CheckpointError` naming the file. ``resume_or_load(path,
    resume=True)`` loads the file that ``last_checkpoint`` names or, when it is missing or cannot
    be read, the newest other ``*_NNNNNNN.pth`` of the folder that can, with a warning that names
    both; a CheckpointError if none can (never from scratch).
    """

    def load(self, path, *args, **kwargs):
        if path and _is_local(path) and not os.path.isfile(path):
            raise CheckpointError(
                f"checkpoint {path} does not exist", file=path, reason="does not exist"
            )
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # Detectron2 resets it after a successful load only; a failed one must not make the
            # next load (resume_or_load's next candidate) fail its "is None" assertion.
            self._parsed_url_during_load = None

    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except Exception as e:  # torch, pickle and zipfile raise many kinds for a broken file
            reason = f"cannot be read ({describe(e)})"
            raise CheckpointError(
                f"checkpoint {filename} {reason}", file=filename, reason=reason
            ) from e

    def resume_or_load(self, path, *, resume=True):
        if not (resume and self.has_checkpoint()) or not _is_local(self.save_dir):
            return super().resume_or_load(path, resume=resume)
        newest = self.get_checkpoint_file()
        others = [
            f
            for f in self.get_all_checkpoint_files()
            if os.path.basename(f) != os.path.basename(newest)
            and _iteration_of(f) < _iteration_of(newest)
        ]
        # (file, what is wrong with it) of each candidate that failed
        failures = [] if newest else [("last_checkpoint", "cannot be read")]
        candidates = ([newest] if newest else []) + sorted(others, key=_iteration_of, reverse=True)
        for candidate in candidates:
            try:
                loaded = self.load(candidate)
            except CheckpointError as e:
                failures.append((e.file, e.reason))
                continue
            if failures:
                file, reason = failures[0]
                logger.warning(
                    f"--resume: the newest checkpoint {file} {reason}; resuming from {candidate}, "
                    "the newest complete one."
                )
            return loaded
        last = os.path.join(self.save_dir, "last_checkpoint")
        what = "; ".join(f"{os.path.basename(file)} {reason}" for file, reason in failures)
        raise CheckpointError(
            f"--resume: no complete checkpoint in {self.save_dir} ({what}): restore one, or "
            f"delete {last} to start from the initial weights",
            file=failures[0][0],
            reason="no complete checkpoint",
        )

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
