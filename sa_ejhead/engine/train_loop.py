"""Detectron2's trainers and evaluation hook, stopping on a failure with the project's errors."""

import contextlib
import logging

from detectron2.engine import AMPTrainer as _D2AMPTrainer
from detectron2.engine import SimpleTrainer as _D2SimpleTrainer
from detectron2.engine import hooks

from ..errors import SAEJHeadError, TrainingDivergedError, describe


class StopsOnDivergence:
    """A trainer mixin: Detectron2's ``FloatingPointError`` in ``run_step`` becomes a
    :class:`~sa_ejhead.errors.TrainingDivergedError` naming the iteration and the last checkpoint
    of ``self.checkpointer`` (set by whoever builds the trainer)."""

    checkpointer = None

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            c = self.checkpointer
            last = c.get_checkpoint_file() if c is not None and c.has_checkpoint() else None
            where = "no checkpoint was written before it"
            if last:
                where = f"the last checkpoint written before it is {last}"
            raise TrainingDivergedError(
                f"training diverged at iteration {self.iter} ({describe(e)}); {where}. Lower "
                "the learning rate or lengthen the warm-up, and train again"
            ) from e


class SimpleTrainer(StopsOnDivergence, _D2SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` with :class:`StopsOnDivergence`."""


class AMPTrainer(StopsOnDivergence, _D2AMPTrainer):
    """Detectron2's ``AMPTrainer`` with :class:`StopsOnDivergence`."""


class EvalHook(hooks.EvalHook):
    """Detectron2's ``EvalHook`` (same arguments), whose evaluation after training runs only when
    training finished (Detectron2's also runs after a failure in the last iteration)."""

    def after_train(self):
        if self.trainer.iter < self.trainer.max_iter:  # training failed
            self._eval_after_train = False
        super().after_train()


class _OneLineInputErrors(logging.Filter):
    """Replaces the traceback of a log record about a project error with the error's one line."""

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
    one line, without its traceback (which :func:`sa_ejhead.errors.run_tool` saves)."""
    logger = logging.getLogger(_TRAIN_LOOP_LOGGER)
    one_line = _OneLineInputErrors()
    logger.addFilter(one_line)
    try:
        yield
    finally:
        logger.removeFilter(one_line)
