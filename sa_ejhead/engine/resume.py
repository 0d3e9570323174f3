"""Exact resumption of training: the data order and the random state depend on the iteration only.

Detectron2 restores the weights, the optimizer, the LR schedule and the iteration counter on
``--resume``, but not where its infinite :class:`TrainingSampler` stream was, nor the random
number generators. A resumed job therefore re-reads the first images of the stream and samples
different proposals. Two small pieces make the remaining state a function of the iteration:

* :class:`ResumableTrainingSampler` skips the part of its (seeded) index stream that the
  iterations before the resume point consumed;
* :class:`IterationSeeder` reseeds Python's, NumPy's and PyTorch's global generators at every
  iteration from ``(seed, iteration, rank)``, and keeps ``seed`` in the checkpoint, so that the
  sampler and every random draw of the model and of the (in-process) data mapping are the same
  whether iteration ``k`` runs in one go or after a resume.
"""

import itertools
import logging
import random

import numpy as np
import torch
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["ResumableTrainingSampler", "IterationSeeder", "iteration_seed"]

logger = logging.getLogger(__name__)


def iteration_seed(seed, iteration, rank=0):
    """Derive the seed of one iteration on one process.

    Args:
        seed (int): the base seed of the run.
        iteration (int): the training iteration.
        rank (int): the process rank.

    Returns:
        int: a seed in ``[0, 2**31)``.
    """
    seq = np.random.SeedSequence([int(seed) % 2**32, int(iteration), int(rank)])
    return int(seq.generate_state(1)[0] % 2**31)


class ResumableTrainingSampler(TrainingSampler):
    """:class:`TrainingSampler` whose stream can start at a given position.

    The stream is Detectron2's (same seed -> same indices); :meth:`set_start` makes the next
    iteration over the sampler begin ``num_samples`` indices into this process's share of it, and
    may replace the seed by the one stored in a checkpoint. The data loader iterates the sampler
    only when training starts, so calling :meth:`set_start` before the first iteration is enough.
    """

    def __init__(self, size, shuffle=True, seed=None):
        """
        Args:
            size (int): the number of samples of the dataset.
            shuffle (bool): shuffle the indices every epoch.
            seed (int or None): the seed of the shuffle; ``None`` draws one shared by all ranks.
        """
        super().__init__(size, shuffle=shuffle, seed=seed)
        self._start = 0

    @property
    def seed(self):
        """int: the seed of the index stream."""
        return self._seed

    def set_start(self, num_samples, seed=None):
        """Begin the stream ``num_samples`` indices in (this process's indices).

        Args:
            num_samples (int): how many indices of this process's stream to skip.
            seed (int or None): if given, the seed of the stream (e.g. the one of a checkpoint).
        """
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self._start = int(num_samples)
        if seed is not None:
            self._seed = int(seed)

    def __iter__(self):
        return itertools.islice(super().__iter__(), self._start, None)


class IterationSeeder(HookBase):
    """Seed the global generators from ``(seed, iteration, rank)`` before every iteration.

    Its state (the base seed) is saved in checkpoints by the trainer, and ``before_train`` moves a
    :class:`ResumableTrainingSampler` to the first sample of the starting iteration. Together they
    make iteration ``k`` draw the same images and the same random numbers whether training ran
    from 0 or resumed at ``k``.

    Exact with ``num_workers=0`` and batches that keep the stream order (no aspect-ratio grouping,
    or images that all fall in one aspect-ratio group). With data-loading worker processes, the
    workers' augmentation generators are reseeded when the loader starts, and a resumed run
    continues the same index stream but not the same augmentations.
    """

    def __init__(self, seed, sampler=None, samples_per_iter=1):
        """
        Args:
            seed (int): the base seed; the same on every rank.
            sampler (ResumableTrainingSampler or None): the training sampler to position.
            samples_per_iter (int): indices this process's sampler yields per iteration (the
                per-process batch size).
        """
        self.seed = int(seed)
        self.sampler = sampler
        self.samples_per_iter = int(samples_per_iter)

    def before_train(self):
        start_iter = self.trainer.iter
        if self.sampler is not None:
            self.sampler.set_start(start_iter * self.samples_per_iter, seed=self.seed)
            if start_iter > 0:
                logger.info(
                    f"Resuming the training data stream at iteration {start_iter} "
                    f"(skipping {start_iter * self.samples_per_iter} samples per process)."
                )

    def before_step(self):
        seed = iteration_seed(self.seed, self.trainer.iter, comm.get_rank())
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state_dict):
        self.seed = int(state_dict["seed"])
