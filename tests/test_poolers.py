"""RefinedROIPooler: Detectron2's pooler then the refinement, in chunks at inference and
checkpointed in training. ThreadedROIAlign / ThreadedROIPooler: the same output as Detectron2's,
split over the CPU threads, forward and backward; its thread pool's fork hook."""

import importlib.util
import os

import pytest
import torch
from torch import nn

from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

import sa_ejhead.modeling.poolers as poolers
from sa_ejhead.modeling import (
    BoundaryRefinement,
    RefinedROIPooler,
    ThreadedROIAlign,
    ThreadedROIPooler,
    use_threaded_roi_align,
)


@pytest.fixture
def four_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(old)


def _rois(n, size=64.0, images=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    idx = torch.randint(0, images, (n, 1), generator=g).float()
    return torch.cat([idx, xy, xy + wh], dim=1)


def test_threaded_roi_align_is_bit_identical(four_threads):
    x = torch.randn(2, 8, 20, 24)
    rois = _rois(300)
    plain = ROIAlign((14, 14), 0.25, 0, aligned=True)
    threaded = ThreadedROIAlign((14, 14), 0.25, 0, aligned=True, min_rois_per_thread=32)
    assert threaded.num_chunks(x, len(rois)) == 4  # the threaded path is really taken
    assert torch.equal(threaded(x, rois), plain(x, rois))
    # fewer RoIs than two chunks' worth: one plain call
    assert threaded.num_chunks(x, 40) == 1
    assert torch.equal(threaded(x, rois[:40]), plain(x, rois[:40]))


@pytest.mark.parametrize("ratio, aligned", [(0, True), (2, True), (1, False)])
def test_threaded_roi_align_with_autograd_gives_torchvisions_gradient(four_threads, ratio, aligned):
    """Training: RoIs split in the forward, channels in the backward; the output and the
    feature map's gradient are torchvision's, bit for bit (a non-contiguous upstream gradient,
    several images, channels not a multiple of the threads)."""
    torch.manual_seed(0)
    rois = _rois(200, images=3)
    x1 = torch.randn(3, 10, 16, 16, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    w = torch.randn(7, 7, 10, 200).permute(3, 2, 0, 1)  # grads arrive non-contiguous
    out1 = ROIAlign((7, 7), 0.25, ratio, aligned)(x1, rois)
    threaded = ThreadedROIAlign((7, 7), 0.25, ratio, aligned, min_rois_per_thread=16)
    assert threaded.num_chunks(x2, 200) == 4
    out2 = threaded(x2, rois)
    assert out2.grad_fn is not None and "ThreadedROIAlign" in type(out2.grad_fn).__name__
    assert torch.equal(out2, out1)
    (out1 * w).sum().backward()
    (out2 * w).sum().backward()
    assert torch.equal(x2.grad, x1.grad)
    assert x2.grad.abs().sum() > 0


def test_threaded_roi_align_backward_splits_the_channels_over_the_workers(
    four_threads, monkeypatch
):
    import threading

    import sa_ejhead.modeling.poolers as poolers

    calls = []
    original = poolers._roi_align_grad

    def recording(grad, *args):
        calls.append((threading.current_thread().name, grad.shape[1]))
        return original(grad, *args)

    monkeypatch.setattr(poolers, "_roi_align_grad", recording)
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    threaded = ThreadedROIAlign((7, 7), 0.25, 2, min_rois_per_thread=16)
    threaded(x, _rois(100, images=1)).sum().backward()
    assert len(calls) >= 4 and sum(c for _, c in calls) == 8  # every channel, once
    assert all(name.startswith("roi_align") for name, _ in calls)


def test_threaded_roi_align_keeps_the_callers_mode(four_threads):
    x = torch.randn(1, 4, 16, 16)
    rois = _rois(256, images=1)
    threaded = ThreadedROIAlign((7, 7), 0.5, 0, min_rois_per_thread=16)
    assert threaded.num_chunks(x, len(rois)) == 4
    out = threaded(x, rois)
    assert not out.requires_grad and not out.is_inference()
    with torch.inference_mode():
        out = threaded(x, rois)
    assert out.is_inference() and torch.equal(out, ROIAlign((7, 7), 0.5, 0)(x, rois))


def test_threaded_roi_align_is_plain_while_tracing(four_threads):
    threaded = ThreadedROIAlign((7, 7), 0.25, 0, min_rois_per_thread=1)
    seen = []

    def fn(x, rois):
        seen.append(threaded.num_chunks(x, rois.shape[0]))
        return threaded(x, rois)

    x, rois = torch.randn(2, 4, 16, 16), _rois(100)
    traced = torch.jit.trace(fn, (x, rois), check_trace=False)
    assert seen == [1]
    assert torch.equal(traced(x, rois), ROIAlign((7, 7), 0.25, 0)(x, rois))


def test_threaded_roi_align_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="min_rois_per_thread"):
        ThreadedROIAlign((7, 7), 0.25, 0, min_rois_per_thread=0)


def test_threaded_pooler_matches_detectron2_pooler(four_threads):
    scales = (1 / 4, 1 / 8, 1 / 16)
    feats = [torch.randn(2, 8, 128 // int(1 / s), 128 // int(1 / s)) for s in scales]
    g = torch.Generator().manual_seed(1)
    boxes = []
    for _ in range(2):  # small to large boxes: every level gets RoIs
        xy = torch.rand(150, 2, generator=g) * 64
        wh = torch.rand(150, 2, generator=g) * 120 + 2
        boxes.append(Boxes(torch.cat([xy, xy + wh], dim=1)))
    plain = ROIPooler(14, scales, 0, "ROIAlignV2")
    threaded = ThreadedROIPooler(14, scales, 0, "ROIAlignV2", min_rois_per_thread=8)
    assert all(isinstance(m, ThreadedROIAlign) and m.aligned for m in threaded.level_poolers)
    assert torch.equal(threaded(feats, boxes), plain(feats, boxes))
    # only plain ROIAlign levels are swapped
    pool = use_threaded_roi_align(ROIPooler(7, scales, 0, "ROIPool"))
    assert not any(isinstance(m, ThreadedROIAlign) for m in pool.level_poolers)
    legacy = use_threaded_roi_align(ROIPooler(7, scales, 0, "ROIAlign"))
    assert all(isinstance(m, ThreadedROIAlign) and not m.aligned for m in legacy.level_poolers)


def test_threaded_roi_align_workers_start_no_thread_teams_of_their_own(four_threads):
    # A worker with the caller's intra-op count would start its own OpenMP team (the RoIAlign's
    # zero fill is a parallel op); the extra threads made libgomp slow every other op on 2 cores.
    import threading

    from sa_ejhead.modeling.poolers import _executor

    x, rois = torch.randn(2, 8, 20, 24), _rois(300)
    threaded = ThreadedROIAlign((7, 7), 0.25, 2, min_rois_per_thread=16)
    with torch.no_grad():
        threaded(x, rois)
    pool = _executor(4)
    assert [pool.submit(torch.get_num_threads).result() for _ in range(8)] == [1] * 8
    # the caller's count and the default of new threads are unchanged
    assert torch.get_num_threads() == 4
    seen = []
    other = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    other.start()
    other.join()
    assert seen == [4]


def test_threaded_inference_false_splits_only_what_autograd_records(four_threads, monkeypatch):
    """threaded_inference=False: inference (nothing recorded) is one plain call, training is
    still split, forward and backward; the numbers are the same either way."""
    x = torch.randn(2, 8, 20, 24)
    rois = _rois(300)
    threaded = ThreadedROIAlign((7, 7), 0.25, 2, min_rois_per_thread=16, threaded_inference=False)
    assert "threaded_inference=False" in repr(threaded)
    expected = ROIAlign((7, 7), 0.25, 2)(x, rois)
    calls = []
    forward = ThreadedROIAlign._forward_threaded
    monkeypatch.setattr(
        ThreadedROIAlign,
        "_forward_threaded",
        lambda self, *a: calls.append(a[-1]) or forward(self, *a),
    )
    with torch.no_grad():
        assert torch.equal(threaded(x, rois), expected)
    assert torch.equal(threaded(x, rois), expected)  # grad mode, but x needs no gradient
    assert calls == []
    x2 = x.clone().requires_grad_(True)
    out = threaded(x2, rois)
    assert calls == [4] and "ThreadedROIAlign" in type(out.grad_fn).__name__
    assert torch.equal(out, expected)
    # the default splits inference too
    calls.clear()
    with torch.no_grad():
        ThreadedROIAlign((7, 7), 0.25, 2, min_rois_per_thread=16)(x, rois)
    assert calls == [4]
    pooler = use_threaded_roi_align(ROIPooler(7, (0.25,), 0, "ROIAlignV2"), 8, False)
    assert not pooler.level_poolers[0].threaded_inference
    pooler = ThreadedROIPooler(7, (0.25,), 0, "ROIAlignV2", threaded_inference=False)
    assert not pooler.level_poolers[0].threaded_inference


# --- RefinedROIPooler ------------------------------------------------------------------------


def _boxes(n_per_image=(30, 25), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in n_per_image:
        xy = torch.rand(n, 2, generator=g) * 48
        wh = torch.rand(n, 2, generator=g) * 60 + 2
        out.append(Boxes(torch.cat([xy, xy + wh], dim=1)))
    return out


def _refined(refinement, **kwargs):
    pooler = ROIPooler(14, (1 / 4, 1 / 8), 0, "ROIAlignV2", canonical_box_size=32)
    return RefinedROIPooler(pooler, refinement, **kwargs), pooler


def test_refined_pooler_is_the_pooler_then_the_refinement():
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8)]
    refinement = BoundaryRefinement(4)
    refined, pooler = _refined(refinement, downsample=2)
    with torch.no_grad():
        expected = refinement(torch.nn.functional.avg_pool2d(pooler(feats, _boxes()), 2))
        assert torch.equal(refined(feats, _boxes()), expected)
        plain, _ = _refined(None)
        assert torch.equal(plain(feats, _boxes()), pooler(feats, _boxes()))
    assert refined.output_size == (14, 14) and refined.level_poolers is pooler.level_poolers
    # the refinement is not the pooler's: no parameters, no state, a plain repr
    assert list(refined.parameters()) == [] and refined.state_dict() == {}
    assert "refinement=BoundaryRefinement, downsample=2" in repr(refined)
    for name, value in [("downsample", 0), ("inference_chunk", -1), ("checkpoint_chunk", 0.5)]:
        with pytest.raises(ValueError, match=f"{name} must be an integer"):
            _refined(refinement, **{name: value})


class _Doubling(nn.Module):
    """A per-RoI refinement that records how many RoIs each call gets."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def forward(self, x):
        self.rows.append(len(x))
        return 2 * x + 1


def test_refined_pooler_refines_in_chunks_in_place_only_without_autograd():
    feats = [torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8)]
    refinement = _Doubling()
    refined, pooler = _refined(refinement, inference_chunk=20)
    with torch.no_grad():
        expected = 2 * pooler(feats, _boxes()) + 1
        assert torch.equal(refined(feats, _boxes()), expected)
    assert refinement.rows == [20, 20, 15]
    refinement.rows.clear()
    refined(feats, _boxes())  # autograd on: at once, not in place
    assert refinement.rows == [55]


def test_refined_pooler_checkpoints_in_chunks_in_training():
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 16, 16, requires_grad=True), torch.randn(2, 4, 8, 8)]
    refinement = BoundaryRefinement(4)
    refined, pooler = _refined(refinement, checkpoint=True, checkpoint_chunk=20)
    out = refined(feats, _boxes())
    assert out.grad_fn is not None
    out.square().sum().backward()
    grads = [feats[0].grad.clone()] + [p.grad.clone() for p in refinement.parameters()]
    feats[0].grad = None
    refinement.zero_grad()
    refinement(pooler(feats, _boxes())).square().sum().backward()
    expected = [feats[0].grad] + [p.grad for p in refinement.parameters()]
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)  # chunks: summation order
    # per chunk, with images split between chunks: 30 + 25 boxes -> 20, 10 + 10, 15
    parts = [[len(b) for b in part] for part in poolers._split_boxes(_boxes(), 20)]
    assert parts == [[20, 0], [10, 10], [0, 15]]


def test_the_fork_hook_is_registered_when_the_first_pool_starts(monkeypatch):
    registered = []
    monkeypatch.setattr(os, "register_at_fork", lambda **hooks: registered.append(hooks))
    # a fresh copy of the module: importing it registers nothing
    spec = importlib.util.spec_from_file_location("_poolers_copy", poolers.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert registered == [] and not fresh._fork_hook_registered
    fresh._executor(2)
    fresh._executor(3)
    assert registered == [{"after_in_child": fresh._reset_pools}]
    for pool in fresh._POOLS.values():
        pool.shutdown()
