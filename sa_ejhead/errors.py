"""The project's errors about bad input, and how the tools show them: one line naming the file and
the field, the traceback in a file (docs/tools.md, "Errors")."""

import contextlib
import logging
import os
import sys
import tempfile
import traceback
import warnings


class SAEJHeadError(Exception):
    """Base of the errors about a user's input."""

    log_dir = None  # where run_tool writes the traceback (errors_logged_in); None: a temporary file

    def __str__(self):  # KeyError would quote the message, OSError print a tuple of arguments
        return str(self.args[0]) if self.args else ""


class ConfigError(SAEJHeadError, KeyError, ValueError):
    """A missing config file, an unknown key, a value of the wrong type, a malformed option (a
    ``KeyError`` and a ``ValueError``, as Detectron2's config errors)."""


class CheckpointError(SAEJHeadError, OSError):
    """A checkpoint that does not exist or cannot be read: ``file``, and ``reason`` (what is
    wrong)."""

    def __init__(self, message, file=None, reason=None):
        super().__init__(message)
        self.file, self.reason = file, reason


class DiskFullError(SAEJHeadError, OSError):
    """No space left on the device while a file was written."""


class TrainingDivergedError(SAEJHeadError, FloatingPointError):
    """A loss, box or score became infinite or NaN."""


class ImageReadError(SAEJHeadError, OSError):
    """An input image that cannot be opened or decoded."""


class DatasetError(SAEJHeadError):
    """Base of the dataset errors: ``file``, and ``field`` (e.g. ``"annotations[3].bbox"``)."""

    def __init__(self, message, file=None, field=None):
        super().__init__(message)
        self.file, self.field = file, field


class DatasetFormatError(DatasetError, ValueError):
    """A malformed or inconsistent annotation file, or an image of another size."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A missing annotation file, image folder or image file."""


class DatasetImageError(DatasetError, OSError):
    """An image file that cannot be decoded, or of a mode Detectron2 reads wrongly."""


def describe(error):
    """``"TypeName: first line of the message"``, cut to about 160 characters: a third-party
    error, quoted on one line."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= 160 else text[:157].rstrip() + "..."


@contextlib.contextmanager
def errors_logged_in(folder):
    """Have :func:`run_tool` write the traceback of a :class:`SAEJHeadError` raised in the block
    to ``folder`` (the run's output folder), unless an inner block chose another."""
    try:
        yield
    except SAEJHeadError as e:
        if folder and e.log_dir is None:
            e.log_dir = folder
        raise


@contextlib.contextmanager
def other_messages_on_stdout():
    """Within the block, Python warnings and PyTorch's log lines go to stdout instead of stderr,
    which then holds the tool's errors only."""
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
    """Write ``text`` to ``<log_dir>/<tool>-error.log``, else to a new temporary file; return its
    path (None if no file could be written)."""
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
    """Run ``main(*args)`` with :func:`other_messages_on_stdout`; return its exit status (0 unless
    it returns an int).

    An :class:`SAEJHeadError` is printed as one line naming ``tool`` (default: the running
    script) and the file that holds its traceback, and returns 1; with ``debug`` it is raised.
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
