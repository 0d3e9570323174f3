"""RoIAlign that uses every CPU thread in inference.

torchvision's CPU ``roi_align`` kernel runs on one thread whatever ``torch.get_num_threads()``
says. The Enriched Feature pools 1000 box RoIs at 14x14, four times the bins of Mask R-CNN's 7x7,
so on a many-core CPU the RoIAlign becomes the largest single cost of the EJ-Head at inference
(measured in projects/gpu_checks/README.md). The RoIs are independent, so the work splits exactly:
the RoIs are cut into contiguous pieces, each piece runs on a Python thread (the op releases the
GIL) and is copied into one preallocated output. The result is bit-identical to one call.

The threaded path is taken only without autograd (inference: in training, each piece's backward
would allocate and add a gradient of the whole feature map), on the CPU, outside
tracing/scripting, with more than one torch thread and enough RoIs; otherwise it is Detectron2's
:class:`ROIAlign` unchanged. There are no parameters, so checkpoints are unaffected.
"""

import collections
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler

__all__ = ["ThreadedROIAlign", "ThreadedROIPooler", "use_threaded_roi_align"]

_POOLS = {}  # thread count -> ThreadPoolExecutor
_POOLS_LOCK = threading.Lock()
_PIECE_BYTES = 2 << 20


def _reset_pools():
    _POOLS.clear()


# A forked child (e.g. a data-loader worker) inherits the pool objects but not their threads.
os.register_at_fork(after_in_child=_reset_pools)


def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of exactly ``workers`` threads (so a call never runs on more threads
    than ``torch.get_num_threads()``)."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="roi_align")
        return _POOLS[workers]


def _is_tracing() -> bool:
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


class ThreadedROIAlign(ROIAlign):
    """Detectron2's :class:`ROIAlign`, with the RoIs split over ``torch.get_num_threads()``
    threads on the CPU in inference. Same arguments, plus:

    Args:
        min_rois_per_thread (int): a thread gets at least this many RoIs (fewer RoIs in all:
            one call, as Detectron2 does).
    """

    def __init__(
        self,
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned=True,
        *,
        min_rois_per_thread: int = 64,
    ):
        super().__init__(output_size, spatial_scale, sampling_ratio, aligned)
        if min_rois_per_thread < 1:
            raise ValueError(f"min_rois_per_thread must be >= 1, got {min_rois_per_thread}")
        self.min_rois_per_thread = int(min_rois_per_thread)

    def num_chunks(self, input: torch.Tensor, num_rois: int) -> int:
        """How many threads this call would use (1: the plain single call)."""
        if (
            input.device.type != "cpu"
            or input.is_quantized
            or (torch.is_grad_enabled() and input.requires_grad)
            or _is_tracing()
        ):
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
        if threads == 1:
            return super().forward(input, rois)
        # torch.profiler does not see the ops of the worker threads: this span is the calling
        # thread's share (submit, wait, copy), so that per-op profiles account for the pooling
        with torch.profiler.record_function("sa_ejhead::threaded_roi_align"):
            return self._forward_threaded(input, rois, threads)

    def _forward_threaded(self, input, rois, threads):
        inference_mode = torch.is_inference_mode_enabled()
        plain_forward = super().forward

        def pool(part):
            # grad and inference mode are thread-local: carry the caller's into the worker
            with torch.inference_mode(inference_mode), torch.no_grad():
                return plain_forward(input, part)

        # The workers only run the RoIAlign, in pieces of about _PIECE_BYTES; this thread copies
        # each finished piece, in order, into the one output and drops it. At most two pieces per
        # thread are submitted ahead, so that finished pieces do not pile up when this thread gets
        # less CPU than the workers.
        num = rois.shape[0]
        out = input.new_empty((num, input.shape[1]) + tuple(self.output_size))
        pieces = max(threads, min(num, math.ceil(out.numel() * out.element_size() / _PIECE_BYTES)))
        bounds = torch.linspace(0, num, pieces + 1).long().tolist()
        executor = _executor(threads)
        ahead = collections.deque()

        def copy_oldest():
            start, end, future = ahead.popleft()
            out[start:end] = future.result()

        for start, end in zip(bounds[:-1], bounds[1:]):
            ahead.append((start, end, executor.submit(pool, rois[start:end])))
            if len(ahead) > 2 * threads:
                copy_oldest()
        while ahead:
            copy_oldest()
        return out

    def __repr__(self):
        return super().__repr__()[:-1] + f", min_rois_per_thread={self.min_rois_per_thread})"


def use_threaded_roi_align(pooler: ROIPooler, min_rois_per_thread: int = 64) -> ROIPooler:
    """Swap, in place, each plain :class:`ROIAlign` level of a Detectron2 ``ROIPooler`` (types
    "ROIAlign" and "ROIAlignV2") for a :class:`ThreadedROIAlign` with the same arguments; other
    pooler types are left as they are.

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
            )
    return pooler


class ThreadedROIPooler(ROIPooler):
    """Detectron2's :class:`ROIPooler` with :class:`ThreadedROIAlign` levels, for configs that
    name their poolers (e.g. ``model.roi_heads.box_pooler._target_`` of Detectron2's own Mask
    R-CNN). Same arguments, plus ``min_rois_per_thread``."""

    def __init__(self, *args, min_rois_per_thread: int = 64, **kwargs):
        super().__init__(*args, **kwargs)
        use_threaded_roi_align(self, min_rois_per_thread)
