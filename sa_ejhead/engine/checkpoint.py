"""Atomic file writes, and a checkpointer that resumes from the newest complete checkpoint."""

import contextlib
import errno
import logging
import os
import re
import shutil

from detectron2.checkpoint import DetectionCheckpointer

from ..errors import CheckpointError, DiskFullError, describe

logger = logging.getLogger(__name__)


def _no_space_left(error, folder):
    """Whether ``error`` (or one it was raised from or while handling: ``torch.save`` turns the
    failed write into a RuntimeError) was a full disk, or ``folder`` has almost no space left."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    try:
        return shutil.disk_usage(folder).free < 2**20  # the write that failed may have been small
    except OSError:
        return False


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a local file for writing atomically: the block writes ``<path>.tmp``, which is flushed
    to disk and renamed to ``path`` when the block ends. An exception in the block (or a crash)
    leaves ``path`` untouched; a full disk raises :class:`~sa_ejhead.errors.DiskFullError`."""
    tmp = path + ".tmp"
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
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
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX: fsync the folder)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write(path, write_fn, *, binary=True):
    """``write_fn(f)`` into the local file ``path``, opened (in binary mode if ``binary``) with
    :func:`atomic_open`."""
    with atomic_open(path, "wb" if binary else "w") as f:
        write_fn(f)


def _is_local(path):
    return "://" not in path


def check_checkpoint_path(path, key, resume_dir=None):
    """Raise :class:`~sa_ejhead.errors.CheckpointError` naming the config ``key`` if ``path`` is a
    local file that does not exist, unless ``resume_dir`` has a ``last_checkpoint`` (which
    ``resume_or_load`` resumes from without reading ``path``)."""
    if resume_dir and os.path.isfile(os.path.join(resume_dir, "last_checkpoint")):
        return
    if path and _is_local(path) and not os.path.isfile(path):
        raise CheckpointError(f"{key}={path!r}: no such checkpoint file")


_ITERATION = re.compile(r"_(\d+)\.pth$")


def _iteration_of(path):
    """The iteration in a checkpoint's name (``model_0000999.pth``: 999; ``model_final``: inf)."""
    match = _ITERATION.search(os.path.basename(path))
    return int(match.group(1)) if match else float("inf")


class _AtomicWrites:
    """A path manager that opens local files for writing with :func:`atomic_open`."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    def open(self, path, mode="r", **kwargs):
        if _is_local(path) and "w" in mode:
            return atomic_open(path, mode)
        return self._path_manager.open(path, mode, **kwargs)


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` that writes its files atomically (through its
    ``path_manager``), and raises :class:`~sa_ejhead.errors.CheckpointError` naming a checkpoint
    that does not exist or cannot be read. ``resume_or_load(path, resume=True)`` loads the file
    that ``last_checkpoint`` names or, if it cannot, the newest other ``*_NNNNNNN.pth`` that
    loads, with a warning; a CheckpointError if none does (never from scratch).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_manager = _AtomicWrites(self.path_manager)

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
        limit = _iteration_of(newest)
        others = [f for f in self.get_all_checkpoint_files() if _iteration_of(f) < limit]
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
