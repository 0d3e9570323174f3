"""The RoI poolers of the EJ-Head: :class:`RefinedROIPooler` and :class:`ThreadedROIAlign`.

:class:`RefinedROIPooler` is the one path by which the EJ-Head pools and refines RoIs: the box
RoIs (of every cascade stage) and the mask RoIs. The ROI heads install it in place of their
``box_pooler`` / ``mask_pooler``, so Detectron2's box, mask and cascade-stage code runs unchanged.

:class:`ThreadedROIAlign` is RoIAlign that uses every CPU thread, forward and backward.
torchvision's CPU ``roi_align`` kernel, and its backward, run on one thread whatever
``torch.get_num_threads()`` says. The Enriched Feature pools 1000 box RoIs at 14x14, four times
the bins of Mask R-CNN's 7x7, so on a many-core CPU the RoIAlign becomes the largest single cost
of the EJ-Head at inference (measured in projects/gpu_checks/README.md), and in training its
backward is one of the largest. Both split exactly, on a pool of Python threads (the ops release
the GIL):

* forward: the RoIs are independent; they are cut into contiguous pieces, each pooled by one
  thread, which copies it into one preallocated output;
* backward: the channels are independent (the gradient of channel c of the feature map depends
  only on channel c of the output's); they are cut into pieces, each thread runs torchvision's
  backward kernel on its channels and copies the result into its channels of the gradient. For
  every element, the kernel adds the same terms in the same order as in one call.

The results are bit-identical to one call. The threaded path is taken on the CPU, outside
tracing/scripting, with more than one torch thread and enough RoIs; otherwise it is Detectron2's
:class:`ROIAlign` unchanged. There are no parameters, so checkpoints are unaffected.

``threaded_inference=False`` keeps the split for the forward and backward that autograd records
(training) and pools in one call where it records nothing (inference). It trades latency for
memory: the workers' allocations at inference leave glibc with more freed memory that it keeps,
which on 2 cores raised the efficient model's inference peak RSS by about 80 MiB on average, with
more spread (docs/benchmark.md).
"""

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List, Optional

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

_POOLS = {}  # thread count -> ThreadPoolExecutor
_POOLS_LOCK = threading.Lock()
_PIECE_BYTES = 2 << 20
_fork_hook_registered = False


def _reset_pools():
    _POOLS.clear()


def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of exactly ``workers`` threads (so a call never runs on more threads
    than ``torch.get_num_threads()``), each limited to one intra-op thread."""
    global _fork_hook_registered
    with _POOLS_LOCK:
        if not _fork_hook_registered:
            # a forked child (e.g. a data-loader worker) inherits the pools but not their threads
            os.register_at_fork(after_in_child=_reset_pools)
            _fork_hook_registered = True
        if workers not in _POOLS:
            executor = ThreadPoolExecutor(workers, thread_name_prefix="roi_align")
            _make_workers_serial(executor, workers)
            _POOLS[workers] = executor
        return _POOLS[workers]


def _make_workers_serial(executor: ThreadPoolExecutor, workers: int):
    """Give every worker thread an intra-op thread count of one.

    torchvision's RoIAlign kernel is serial, but it zero-fills its output with a parallel op, so
    a worker with the default count starts an OpenMP team of its own. libgomp then manages more
    threads than there are cores and makes every team, the caller's included, sleep instead of
    spin between parallel regions (on 2 cores the efficient model's ResNet kept 1.72 cores busy
    instead of 1.97: projects/cpu_checks/module_parallelism.py). OpenMP's thread count is per
    thread, PyTorch's default for new threads is process-wide: each worker sets one and makes
    PyTorch read it (its first query initialises the thread), all while the caller waits, then
    the caller restores the process-wide count, which leaves the workers' own at one.
    """
    previous = torch.get_num_threads()
    ready = threading.Barrier(workers + 1)

    def serial():
        try:
            torch.set_num_threads(1)
            torch.get_num_threads()  # the first query initialises the thread, from the count set
        finally:
            ready.wait()

    try:
        for _ in range(workers):
            executor.submit(serial)
        ready.wait()  # every worker has taken exactly one of the tasks
    finally:
        torch.set_num_threads(previous)


def _is_tracing() -> bool:
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


class ThreadedROIAlign(ROIAlign):
    """Detectron2's :class:`ROIAlign`, with the RoIs split over ``torch.get_num_threads()``
    threads on the CPU (forward, and backward by channels). Same arguments, plus:

    Args:
        min_rois_per_thread (int): a thread gets at least this many RoIs (fewer RoIs in all:
            one call, as Detectron2 does).
        threaded_inference (bool): False: a forward that autograd does not record (no grad
            mode, or an input that needs no gradient) is one call, as Detectron2's; only the
            training forward and its backward are split.
    """

    def __init__(
        self,
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned=True,
        *,
        min_rois_per_thread: int = 16,
        threaded_inference: bool = True,
    ):
        super().__init__(output_size, spatial_scale, sampling_ratio, aligned)
        if min_rois_per_thread < 1:
            raise ValueError(f"min_rois_per_thread must be >= 1, got {min_rois_per_thread}")
        self.min_rois_per_thread = int(min_rois_per_thread)
        self.threaded_inference = bool(threaded_inference)

    def num_chunks(self, input: torch.Tensor, num_rois: int) -> int:
        """How many threads this call would use (1: the plain single call)."""
        if input.device.type != "cpu" or input.is_quantized or _is_tracing():
            return 1
        return max(1, min(torch.get_num_threads(), num_rois // self.min_rois_per_thread))

    def forward(self, input, rois):
        """
        Args:
            input: NCHW features.
            rois: Bx5 boxes; the first column is the index into N, the others are xyxy.

        Returns:
            Tensor: B x C x output_size, identical to :class:`ROIAlign`'s.
        """
        threads = self.num_chunks(input, rois.shape[0])
        recorded = torch.is_grad_enabled() and input.requires_grad
        if threads == 1 or not (recorded or self.threaded_inference):
            return super().forward(input, rois)
        # torch.profiler does not see the ops of the worker threads: this span is the calling
        # thread's share (submit and wait), so that per-op profiles account for the pooling
        with torch.profiler.record_function("sa_ejhead::threaded_roi_align"):
            if recorded:
                return _ThreadedROIAlignFunction.apply(input, rois, self, threads)
            return self._forward_threaded(input, rois, threads)

    def _forward_threaded(self, input, rois, threads):
        inference_mode = torch.is_inference_mode_enabled()
        plain_forward = super().forward
        num = rois.shape[0]
        out = input.new_empty((num, input.shape[1]) + tuple(self.output_size))

        def pool(start, end):
            # grad and inference mode are thread-local: carry the caller's into the worker
            with torch.inference_mode(inference_mode), torch.no_grad():
                out[start:end] = plain_forward(input, rois[start:end])

        _run_pieces(pool, num, out, threads)
        return out

    def _backward_threaded(self, grad_out, rois, input_shape, threads):
        """The gradient of the feature map: torchvision's backward kernel, channels split."""
        batch, channels, height, width = input_shape
        grad_in = grad_out.new_empty(input_shape)
        rois = rois.to(dtype=grad_out.dtype)  # as ROIAlign.forward passes them to the kernel
        args = (float(self.spatial_scale), *self.output_size)
        tail = (height, width, int(self.sampling_ratio), bool(self.aligned))

        def grad(start, end):
            with torch.no_grad():
                grad_in[:, start:end] = _roi_align_grad(
                    grad_out[:, start:end], rois, *args, batch, end - start, *tail
                )

        _run_pieces(grad, channels, grad_in, threads)
        return grad_in

    def __repr__(self):
        return (
            super().__repr__()[:-1] + f", min_rois_per_thread={self.min_rois_per_thread}, "
            f"threaded_inference={self.threaded_inference})"
        )


def _roi_align_grad(grad, rois, *args):
    """torchvision's RoIAlign backward kernel (the op its autograd calls)."""
    return torch.ops.torchvision._roi_align_backward(grad, rois, *args)


def _run_pieces(fn, length, out, threads):
    """``fn(start, end)`` over contiguous pieces of ``range(length)`` on the pool of ``threads``
    threads, each piece about ``_PIECE_BYTES`` of ``out`` (at least ``threads`` pieces).

    Each worker computes its piece and copies it into ``out`` itself (one intra-op thread, see
    _make_workers_serial); this thread only waits. Copying here instead would wake this thread's
    OpenMP team for every piece, and its threads would spin for the cores the workers need.
    """
    pieces = math.ceil(out.numel() * out.element_size() / _PIECE_BYTES)
    pieces = max(threads, min(length, pieces))
    bounds = torch.linspace(0, length, pieces + 1).long().tolist()
    executor = _executor(threads)
    futures = [executor.submit(fn, a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for future in futures:
        future.result()


class _ThreadedROIAlignFunction(torch.autograd.Function):
    """:class:`ThreadedROIAlign`'s forward and backward under autograd; the same gradient as
    torchvision's RoIAlign, bit for bit (none for the boxes, as there)."""

    @staticmethod
    def forward(ctx, input, rois, module, threads):
        ctx.save_for_backward(rois)
        ctx.module, ctx.threads, ctx.input_shape = module, threads, tuple(input.shape)
        return module._forward_threaded(input, rois, threads)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (rois,) = ctx.saved_tensors
        with torch.profiler.record_function("sa_ejhead::threaded_roi_align_backward"):
            grad = ctx.module._backward_threaded(grad_out, rois, ctx.input_shape, ctx.threads)
        return grad, None, None, None


def use_threaded_roi_align(
    pooler: ROIPooler, min_rois_per_thread: int = 16, threaded_inference: bool = True
) -> ROIPooler:
    """Swap, in place, each plain :class:`ROIAlign` level of a Detectron2 ``ROIPooler`` (types
    "ROIAlign" and "ROIAlignV2") for a :class:`ThreadedROIAlign` with the same arguments (and
    ``min_rois_per_thread``, ``threaded_inference``); other pooler types are left as they are.

    Returns:
        ROIPooler: ``pooler``.
    """
    for i, level in enumerate(pooler.level_poolers):
        if type(level) is ROIAlign:
            pooler.level_poolers[i] = ThreadedROIAlign(
                level.output_size,
                level.spatial_scale,
                level.sampling_ratio,
                level.aligned,
                min_rois_per_thread=min_rois_per_thread,
                threaded_inference=threaded_inference,
            )
    return pooler


class ThreadedROIPooler(ROIPooler):
    """Detectron2's :class:`ROIPooler` with :class:`ThreadedROIAlign` levels, for configs that
    name their poolers (e.g. ``model.roi_heads.box_pooler._target_`` of Detectron2's own Mask
    R-CNN). Same arguments, plus ``min_rois_per_thread`` and ``threaded_inference``."""

    def __init__(
        self, *args, min_rois_per_thread: int = 16, threaded_inference: bool = True, **kwargs
    ):
        super().__init__(*args, **kwargs)
        use_threaded_roi_align(self, min_rois_per_thread, threaded_inference)


class RefinedROIPooler(nn.Module):
    """
    A Detectron2 :class:`ROIPooler` followed by the EJ-Head's refinement of the pooled RoIs:
    ``refinement(avg_pool(pooler(features, boxes), downsample))``, R x C x S x S out, with
    S = the pooler's output size / ``downsample``. It takes and returns what ``ROIPooler``
    does, so an ROI heads' ``box_pooler`` or ``mask_pooler`` can be one.

    Memory levers (the same outputs and gradients up to float summation order):

    * at inference (nothing recorded by autograd), the RoIs are pooled at once and refined
      ``inference_chunk`` at a time, each chunk written back into the pooled tensor, so that the
      refinement's intermediate maps exist for one chunk instead of all RoIs (1000 box RoIs per
      image). Pooling in chunks too would lower the live peak further but raised the peak RSS
      (glibc keeps more of the freed chunks; docs/design.md). Not while tracing;
    * in training, ``checkpoint=True`` runs the pooling and the refinement under activation
      checkpointing: the pooled RoIs and the refinement's inner maps are recomputed in the
      backward instead of kept from the forward (one more pooling and refinement forward per
      step). The checkpointed forward, which keeps no graph, and the backward's recomputation
      pool and refine ``checkpoint_chunk`` RoIs at a time.

    Args:
        pooler (ROIPooler): pools the RoIs of the feature maps.
        refinement (nn.Module or None): applied to the pooled RoIs (R x C x S x S -> same
            shape), e.g. a :class:`~sa_ejhead.modeling.BoundaryRefinement`; None: the pooled
            RoIs as they are. It is not a child of this module: the ROI heads own it (its weights
            are ``roi_heads.refinement.*`` in a checkpoint) and share it between their poolers.
        downsample (int): average-pool the RoIs by this factor before the refinement (1: no
            pooling).
        inference_chunk (int): RoIs refined at a time at inference; 0: all at once.
        checkpoint (bool): activation checkpointing of the pooling and refinement in training.
        checkpoint_chunk (int): RoIs pooled and refined at a time when checkpointed; 0: all.
    """

    def __init__(
        self,
        pooler: ROIPooler,
        refinement: Optional[nn.Module] = None,
        *,
        downsample: int = 1,
        inference_chunk: int = 0,
        checkpoint: bool = False,
        checkpoint_chunk: int = 0,
    ):
        super().__init__()
        check_count("downsample", downsample, 1)
        check_count("inference_chunk", inference_chunk, 0)
        check_count("checkpoint_chunk", checkpoint_chunk, 0)
        self.pooler = pooler
        # not registered as a child: see ``refinement`` above
        self.__dict__["refinement"] = refinement
        self.downsample = int(downsample)
        self.inference_chunk = int(inference_chunk)
        self.checkpoint = bool(checkpoint)
        self.checkpoint_chunk = int(checkpoint_chunk)

    @property
    def output_size(self):
        """The pooler's output size (before ``downsample``)."""
        return self.pooler.output_size

    @property
    def level_poolers(self):
        """The pooler's RoIAlign (or other) module of each feature level."""
        return self.pooler.level_poolers

    def forward(self, features: List[torch.Tensor], boxes: List[Boxes]) -> torch.Tensor:
        """
        Args:
            features (list[Tensor]): the feature maps, N x C x H x W each, as ``ROIPooler``.
            boxes (list[Boxes]): the RoIs of each image.

        Returns:
            Tensor: R x C x S x S, the RoIs of all images in order.
        """
        if self.refinement is None:
            return self._pool(features, boxes)
        if self.checkpoint and self.training and torch.is_grad_enabled():
            # non-reentrant, so that the refinement's parameters get their gradients
            return checkpoint(
                self._pool_and_refine_in_chunks, boxes, *features, use_reentrant=False
            )
        x = self._pool(features, boxes)
        chunk = self.inference_chunk
        if torch.is_grad_enabled() or chunk <= 0 or len(x) <= chunk or _is_tracing():
            return self.refinement(x)
        for part in x.split(chunk):
            part.copy_(self.refinement(part))  # nothing recorded: in place, per-RoI operations
        return x

    def _pool(self, features, boxes):
        x = self.pooler(features, boxes)
        return F.avg_pool2d(x, self.downsample) if self.downsample > 1 else x

    def _pool_and_refine_in_chunks(self, boxes: List[Boxes], *features: torch.Tensor):
        """``refinement(_pool(features, boxes))``, ``checkpoint_chunk`` RoIs at a time into one
        preallocated output."""
        total = sum(len(b) for b in boxes)
        chunk = self.checkpoint_chunk
        if chunk <= 0 or total <= chunk:
            return self.refinement(self._pool(list(features), boxes))
        out, start = None, 0
        for part in _split_boxes(boxes, chunk):
            y = self.refinement(self._pool(list(features), part))
            if out is None:
                out = y.new_empty((total,) + tuple(y.shape[1:]))
            out[start : start + len(y)] = y
            start += len(y)
        return out

    def extra_repr(self) -> str:
        refinement = type(self.refinement).__name__ if self.refinement is not None else None
        return (
            f"refinement={refinement}, downsample={self.downsample}, "
            f"inference_chunk={self.inference_chunk}, checkpoint={self.checkpoint}, "
            f"checkpoint_chunk={self.checkpoint_chunk}"
        )


def check_count(name: str, value, least: int):
    """Raise a ValueError naming ``name`` unless ``value`` is an integer >= ``least``."""
    if int(value) != value or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def _split_boxes(boxes: List[Boxes], chunk: int) -> Iterator[List[Boxes]]:
    """The RoIs of all images, in order, ``chunk`` at a time: per chunk, one (maybe empty)
    :class:`Boxes` per image."""
    sizes = [len(b) for b in boxes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for s in range(0, sum(sizes), chunk):
        e = s + chunk
        yield [
            b[min(max(s - o, 0), n) : min(max(e - o, 0), n)]
            for b, o, n in zip(boxes, starts, sizes)
        ]
