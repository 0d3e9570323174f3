"""The project's own errors, and how the tools show them: one line, the traceback in a file.

Bad input (a dataset file, an image, a config key) raises a subclass of :class:`SAEJHeadError`
whose message names the file and the field. The tools run their ``main`` through
:func:`run_tool`, which prints that message as one line, writes the full traceback to a log
file and says where, and exits non-zero; ``--debug`` raises the error with its traceback instead.
Any other exception is a bug and keeps its traceback.
"""

import os
import sys
import tempfile
import traceback

__all__ = ["SAEJHeadError", "ConfigError", "run_tool"]


class SAEJHeadError(Exception):
    """Base of the errors about a user's input; the message names the file and the field."""


class ConfigError(SAEJHeadError, KeyError, ValueError):
    """A config key that does not exist, a value that does not fit, or a malformed command-line
    option (a ``KeyError`` and a ``ValueError``, as the errors of Detectron2's configs)."""

    def __str__(self):  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def run_tool(main, *args, debug=False, tool=None):
    """Run ``main(*args)``; report an :class:`SAEJHeadError` as one line, unless ``debug``.

    ``tool`` names the tool in the message and the log file (default: the running script's).
    Returns the exit status: ``main``'s own if it returns an int, else 0; 1 after an error.
    """
    try:
        status = main(*args)
    except SAEJHeadError as e:
        if debug:
            raise
        tool = tool or os.path.splitext(os.path.basename(sys.argv[0]))[0] or "sa_ejhead"
        log_file = os.path.join(tempfile.gettempdir(), f"{tool}-error.log")
        with open(log_file, "w") as f:
            f.write(traceback.format_exc())
        print(f"{tool}: error: {e}", file=sys.stderr)
        print(f"(traceback in {log_file}; run with --debug to show it)", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0
