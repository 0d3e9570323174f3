"""Exact resumption of training: the data order and the random state depend on the iteration only
(docs/tools.md, "Resume loses nothing")."""

import itertools
import logging
import random

import numpy as np
import torch
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def run_seed(seed):
    """The run's base seed: ``seed`` if it is >= 0, else one drawn and shared by all ranks."""
    if seed is None or seed < 0:
        seed = comm.shared_random_seed()
    return int(seed)


def process_seed(seed):
    """This process's seed in ``[0, 2**31)`` (model initialisation, the loader's generator)."""
    return (seed + comm.get_rank()) % 2**31


def iteration_seed(seed, iteration, rank=0):
    """The seed in ``[0, 2**31)`` of one iteration on one process, from the run's base seed."""
    seq = np.random.SeedSequence([int(seed) % 2**32, int(iteration), int(rank)])
    return int(seq.generate_state(1)[0] % 2**31)


class ResumableTrainingSampler(TrainingSampler):
    """:class:`TrainingSampler` (same arguments, same stream) whose stream can start at a given
    position (:meth:`set_start`, before the data loader is first iterated)."""

    _start = 0

    def set_start(self, num_samples, seed=None):
        """Begin the stream ``num_samples`` indices into this process's share of it, with
        ``seed`` (e.g. a checkpoint's) if given."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self._start = int(num_samples)
        if seed is not None:
            self._seed = int(seed)

    def __iter__(self):
        return itertools.islice(super().__iter__(), self._start, None)


class IterationSeeder(HookBase):
    """Seed the global generators from ``(seed, iteration, rank)`` before every iteration; keep
    ``seed`` in the checkpoints, and move the ``sampler`` (a :class:`ResumableTrainingSampler`
    drawing ``samples_per_iter`` indices per iteration on this process) to the starting iteration.
    """

    def __init__(self, seed, sampler=None, samples_per_iter=1):
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
