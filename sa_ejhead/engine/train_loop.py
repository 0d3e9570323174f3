"""Detectron2's trainers and evaluation hook, stopping on a failure with the project's errors.

- :class:`SimpleTrainer` and :class:`AMPTrainer` turn Detectron2's ``FloatingPointError`` (a
  non-finite loss in ``_write_metrics``, or non-finite proposals in the RPN, whichever comes
  first) into a :class:`~sa_ejhead.errors.TrainingDivergedError` naming the iteration and the
  last checkpoint written before it.
- :class:`EvalHook` evaluates after training only when training finished: Detectron2's also
  evaluates after a failure in the last iteration, whose error then follows the first one.
- :func:`input_errors_on_one_line` keeps the traceback of a project error out of the log line
  that Detectron2's training loop writes when training stops (the tools print the error as one
  line and save its traceback, :func:`sa_ejhead.errors.run_tool`).
"""

import contextlib
import logging

from detectron2.engine import AMPTrainer as _D2AMPTrainer
from detectron2.engine import SimpleTrainer as _D2SimpleTrainer
from detectron2.engine import hooks

from ..errors import SAEJHeadError, TrainingDivergedError, describe

__all__ = ["AMPTrainer", "EvalHook", "SimpleTrainer", "input_errors_on_one_line"]


class _StopsOnDivergence:
    """Turns a FloatingPointError of ``run_step`` into a TrainingDivergedError.

    ``checkpointer`` (set by whoever builds the trainer and its checkpointer) names the last
    checkpoint in the error.
    """

    checkpointer = None

    def _last_checkpoint(self):
        checkpointer = self.checkpointer
        if checkpointer is not None and checkpointer.has_checkpoint():
            return checkpointer.get_checkpoint_file() or None
        return None

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            last = self._last_checkpoint()
            where = (
                f"the last checkpoint written before it is {last}"
                if last
                else "no checkpoint was written before it"
            )
            raise TrainingDivergedError(
                f"training diverged at iteration {self.iter} ({describe(e)}); {where}. Lower "
                "the learning rate or lengthen the warm-up, and train again"
            ) from e


class SimpleTrainer(_StopsOnDivergence, _D2SimpleTrainer):
    """Detectron2's :class:`~detectron2.engine.SimpleTrainer` that stops on a non-finite loss or
    prediction with a :class:`~sa_ejhead.errors.TrainingDivergedError`."""


class AMPTrainer(_StopsOnDivergence, _D2AMPTrainer):
    """Detectron2's :class:`~detectron2.engine.AMPTrainer` that stops on a non-finite loss or
    prediction with a :class:`~sa_ejhead.errors.TrainingDivergedError`."""


class EvalHook(hooks.EvalHook):
    """Detectron2's :class:`~detectron2.engine.hooks.EvalHook` (same arguments), except that the
    evaluation after training runs only when the last iteration finished, not after a failure.

    Detectron2's ``TrainerBase.train`` leaves ``iter`` at ``max_iter`` when training finished and
    at the failed iteration otherwise; Detectron2's hook evaluates when ``iter + 1 >= max_iter``,
    i.e. also after a failure in the last iteration.
    """

    def after_train(self):
        if self.trainer.iter < self.trainer.max_iter:  # training failed
            self._eval_after_train = False
        super().after_train()


class _OneLineInputErrors(logging.Filter):
    """Drops the traceback from a log record about a project error (its message stays, with the
    error's one line appended)."""

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, SAEJHeadError):
            record.msg = f"{record.getMessage()} {type(error).__name__}: {error}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


# TrainerBase.train logs "Exception during training:" with the traceback, before after_train.
_TRAIN_LOOP_LOGGER = "detectron2.engine.train_loop"


@contextlib.contextmanager
def input_errors_on_one_line():
    """Within the block, Detectron2's training loop logs a project error that stops training as
    one line, without its traceback (other exceptions keep theirs)."""
    logger = logging.getLogger(_TRAIN_LOOP_LOGGER)
    one_line = _OneLineInputErrors()
    logger.addFilter(one_line)
    try:
        yield
    finally:
        logger.removeFilter(one_line)
