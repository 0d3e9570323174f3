"""The project's own errors, and how the tools show them: one line, the traceback in a file.

Bad input (a dataset file, an image, a config key, a checkpoint, a full disk, a training run
that diverges) raises a subclass of :class:`SAEJHeadError` whose message names the file and the
field, where the fault is met (loading the checkpoint, reading the image, applying the override).
The tools run their ``main`` through :func:`run_tool`, which prints that message as one line,
with the file it wrote the full traceback to, and exits non-zero; ``--debug`` raises the error
with its traceback instead. Any other exception is a bug and keeps its traceback.
"""

import contextlib
import logging
import os
import sys
import tempfile
import traceback
import warnings

__all__ = [
    "SAEJHeadError",
    "CheckpointError",
    "ConfigError",
    "DiskFullError",
    "TrainingDivergedError",
    "describe",
    "errors_logged_in",
    "other_messages_on_stdout",
    "run_tool",
]


class SAEJHeadError(Exception):
    """Base of the errors about a user's input; the message names the file and the field."""

    #: str or None: the run's output folder, where :func:`run_tool` writes the traceback (set by
    #: :func:`errors_logged_in`); None: a new temporary file.
    log_dir = None


class ConfigError(SAEJHeadError, KeyError, ValueError):
    """A config file that does not exist, a config key that does not exist, a value of the wrong
    type, or a malformed command-line option (a ``KeyError`` and a ``ValueError``, as the errors of
    Detectron2's configs)."""

    def __str__(self):  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class CheckpointError(SAEJHeadError, OSError):
    """A checkpoint that does not exist or cannot be read (truncated, not a checkpoint); ``file``
    names it and ``reason`` says what is wrong with it."""

    def __init__(self, message, file=None, reason=None):
        super().__init__(message)
        self.file = file
        self.reason = reason

    def __str__(self):  # OSError would print its arguments as a tuple
        return str(self.args[0]) if self.args else ""


class DiskFullError(SAEJHeadError, OSError):
    """No space was left on the device while a file was written; the message names the folder."""


class TrainingDivergedError(SAEJHeadError, FloatingPointError):
    """A loss, box or score became infinite or NaN; the message names the iteration and the last
    checkpoint written before it."""


def describe(error, limit=160):
    """``"TypeName: first line of the message"``, cut to about ``limit`` characters: a
    third-party error, quoted on one line."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


@contextlib.contextmanager
def errors_logged_in(folder):
    """Mark the :class:`SAEJHeadError` raised inside the block to have its traceback written in
    ``folder`` (the run's output folder), unless an inner block chose another."""
    try:
        yield
    except SAEJHeadError as e:
        if folder and e.log_dir is None:
            e.log_dir = folder
        raise


@contextlib.contextmanager
def other_messages_on_stdout():
    """Within the block, Python warnings and PyTorch's own log lines (its ``W...`` lines) go to
    stdout, with the tools' log, instead of stderr: a tool's stderr then holds its errors only."""
    torch_logger = logging.getLogger("torch")
    # PyTorch's handler is its own class, with the stream it writes to as ``stream``
    stderr_handlers = [h for h in torch_logger.handlers if getattr(h, "stream", None) is sys.stderr]
    replacements = []
    for handler in stderr_handlers:
        replacement = logging.StreamHandler(sys.stdout)
        replacement.setLevel(handler.level)
        replacement.setFormatter(handler.formatter)
        torch_logger.removeHandler(handler)
        torch_logger.addHandler(replacement)
        replacements.append(replacement)

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stdout.write(warnings.formatwarning(message, category, filename, lineno, line))

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        for replacement in replacements:
            torch_logger.removeHandler(replacement)
        for handler in stderr_handlers:
            torch_logger.addHandler(handler)


def _write_log(tool, error, text):
    """Write ``text`` to ``<log_dir>/<tool>-error.log``, or else to a new temporary file; return
    its path (None if no file could be written)."""
    if error.log_dir and os.path.isdir(error.log_dir):
        path = os.path.join(error.log_dir, f"{tool}-error.log")
        try:
            with open(path, "w") as f:
                f.write(text)
            return path
        except OSError:  # e.g. the disk that is full: try the temporary folder
            pass
    try:
        fd, path = tempfile.mkstemp(prefix=f"{tool}-error-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    except OSError:
        return None


def run_tool(main, *args, debug=False, tool=None):
    """Run ``main(*args)``; report an :class:`SAEJHeadError` as one line, unless ``debug``.

    Python warnings and PyTorch's log lines go to stdout meanwhile
    (:func:`other_messages_on_stdout`). ``tool`` names the tool in the message and the log file
    (default: the running script's). The
    traceback goes to ``<tool>-error.log`` in the run's output folder when the error knows it
    (:func:`errors_logged_in`), else to a new ``<tool>-error-XXXX.log`` in the temporary folder;
    the line names the file. Returns the exit status: ``main``'s own if it returns an int, else 0;
    1 after an error.
    """
    try:
        with other_messages_on_stdout():
            status = main(*args)
    except SAEJHeadError as e:
        if debug:
            raise
        tool = tool or os.path.splitext(os.path.basename(sys.argv[0]))[0] or "sa_ejhead"
        log_file = _write_log(tool, e, traceback.format_exc())
        where = f"traceback in {log_file}" if log_file else "the traceback could not be saved"
        message = " ".join(str(e).split("\n"))  # one line, whatever the message holds
        print(f"{tool}: error: {message} ({where}; --debug shows it)", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0
