"""Exact pooling and the RefinedROIPooler's memory levers (docs/design.md, "Costs and the
efficient setting"):

(a) with a fixed sampling ratio s, a k x k average pool of an S x S RoIAlign is an (S/k) x (S/k)
    RoIAlign with ratio k*s, so the efficient model states its box pooler as 7x7 at ratio 2
    (= 14x14 at ratio 1, averaged); checked on torchvision's op and on the EJ-Head (predictions,
    losses, gradients; single-stage and cascade). The adaptive ratio has no such identity:
    ``box_refinement_downsample`` average-pools its 14x14 RoIs;
(b) at inference the box RoIs are refined ``box_inference_chunk`` at a time, in every cascade
    stage;
(c) in training, checkpointed pooling + refinement gives the same losses and gradients.
"""

import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import roi_align

from detectron2.config import LazyConfig
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
)
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from sa_ejhead.modeling import BoundaryRefinement, EJCascadeROIHeads, EJROIHeads

C, K = 8, 3  # feature channels, classes
IMAGE = (64, 64)
ATOL = 1e-5


# ---------------------------------------------------------------------------------------------
# (a) the identity on torchvision's RoIAlign


def _rois(num, height, width, seed):
    """Random xyxy boxes in feature-map pixels (scale 1), as Bx5 with the image index first;
    some partly or wholly outside the map, some smaller than one pixel."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * torch.tensor([width * 1.4, height * 1.4]) - 0.2 * (
        torch.tensor([width, height])
    )
    wh = torch.rand(num, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
    wh[:4] = torch.rand(4, 2, generator=g) * 0.9  # sub-pixel boxes (aligned=False clamps to 1)
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[4] = torch.tensor([-6.0, -5.0, 7.0, 9.0])  # over the top-left corner
    boxes[5] = torch.tensor([width - 4.0, height - 3.0, width + 9.0, height + 6.0])  # bottom-right
    index = torch.randint(0, 2, (num, 1), generator=g).float()
    return torch.cat([index, boxes], dim=1)


def _pool_both_ways(size, factor, ratio, aligned, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 19, 23, generator=g, dtype=torch.float32)
    rois = _rois(40, 19, 23, seed)
    fine = roi_align(x, rois, size, 1.0, ratio, aligned)
    old = F.avg_pool2d(fine, factor)
    new = roi_align(x, rois, size // factor, 1.0, factor * ratio if ratio > 0 else 0, aligned)
    return old, new


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("size,factor,ratio", [(14, 2, 1), (14, 2, 2), (14, 2, 3), (21, 3, 2)])
def test_avg_of_roi_align_is_roi_align_at_ratio_times_factor(size, factor, ratio, aligned):
    old, new = _pool_both_ways(size, factor, ratio, aligned)
    assert new.shape == old.shape == (40, 5, size // factor, size // factor)
    assert old.abs().max() > 0.1  # not trivially zero
    torch.testing.assert_close(new, old, atol=ATOL, rtol=0)


@pytest.mark.parametrize("aligned", [True, False])
def test_adaptive_ratio_has_no_such_identity(aligned):
    """With s = 0 the two differ, so the rewrite must not be used for the adaptive ratio."""
    old, new = _pool_both_ways(14, 2, 0, aligned)
    assert (new - old).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# (b), (c) the EJ-Head


def _features(seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    feats = {
        "p2": torch.randn(2, C, 16, 16, generator=g),
        "p3": torch.randn(2, C, 8, 8, generator=g),
    }
    for f in feats.values():
        f.requires_grad_(requires_grad)
    return feats


GT_BOXES = torch.tensor([[4.0, 4.0, 28.0, 30.0], [34.0, 30.0, 60.0, 60.0]])


def _targets():
    out = []
    for _ in range(2):
        t = Instances(IMAGE)
        t.gt_boxes = Boxes(GT_BOXES.clone())
        t.gt_classes = torch.tensor([0, 2])
        masks = torch.zeros(2, *IMAGE, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(GT_BOXES.int().tolist()):
            masks[i, y0:y1, x0 + 2 : x1 - 2] = True
        t.gt_masks = BitMasks(masks)
        out.append(t)
    return out


def _proposals(seed=0):
    """Per image: jittered GT boxes and random boxes, a few reaching past the image border, on
    both pyramid levels (small and large boxes)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        jitter = GT_BOXES.repeat(10, 1) + 2 * torch.randn(20, 4, generator=g)
        xy = torch.rand(20, 2, generator=g) * 70 - 6
        wh = 2 + torch.rand(20, 2, generator=g) * 40
        p = Instances(IMAGE)
        p.proposal_boxes = Boxes(torch.cat([jitter, torch.cat([xy, xy + wh], 1)]))
        p.objectness_logits = torch.randn(40, generator=g)
        out.append(p)
    return out


def _heads(cls=EJROIHeads, sampling_ratio=0, resolution=14, downsample=1, **kwargs):
    torch.manual_seed(0)  # the same weights for the same kind of heads
    res = resolution // downsample
    pooler_type = "ROIAlignV2" if kwargs.pop("aligned", True) else "ROIAlign"

    def pooler(size, ratio):
        # level 2 for boxes under 32 pixels, 3 above (both levels in use)
        return ROIPooler(size, (1 / 4, 1 / 8), ratio, pooler_type, 32, canonical_level=3)

    def box_head():
        return FastRCNNConvFCHead(
            ShapeSpec(channels=C, height=res, width=res), conv_dims=[], fc_dims=[16]
        )

    def box_predictor(weights=(10, 10, 5, 5)):
        return FastRCNNOutputLayers(
            ShapeSpec(channels=16),
            box2box_transform=Box2BoxTransform(weights),
            num_classes=K,
            test_score_thresh=0.0,
            cls_agnostic_bbox_reg=cls is EJCascadeROIHeads,
        )

    args = dict(
        num_classes=K,
        batch_size_per_image=32,
        positive_fraction=0.5,
        box_in_features=["p2", "p3"],
        box_pooler=pooler(resolution, sampling_ratio),
        mask_in_features=["p2", "p3"],
        mask_pooler=pooler(14, 0),
        mask_head=MaskRCNNConvUpsampleHead(
            ShapeSpec(channels=C, height=14, width=14), num_classes=K, conv_dims=[C]
        ),
        refinement=BoundaryRefinement(C),
        box_refinement_downsample=downsample,
        interleave=True,
    )
    if cls is EJCascadeROIHeads:
        args.update(
            proposal_matchers=[Matcher([t], [0, 1], False) for t in (0.5, 0.6)],
            box_heads=[box_head() for _ in range(2)],
            box_predictors=[box_predictor(w) for w in [(10, 10, 5, 5), (20, 20, 10, 10)]],
        )
    else:
        args.update(
            proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False),
            box_head=box_head(),
            box_predictor=box_predictor(),
        )
    args.update(kwargs)
    return cls(**args)


class _Calls:
    """Records the first dimension (the RoIs) of a module's inputs."""

    def __init__(self, module):
        self.rows = []
        module.register_forward_pre_hook(lambda _m, args: self.rows.append(len(args[0])))


def _train_step(heads):
    heads.train()
    feats = _features(requires_grad=True)
    torch.manual_seed(1)  # the proposal and interleaving sampling
    with EventStorage():
        _, losses = heads(None, feats, _proposals(), _targets())
    sum(losses.values()).backward()
    return losses, feats


def _predict(heads):
    with torch.no_grad():
        out, _ = heads.eval()(None, _features(), _proposals())
    return out


def _assert_same_predictions(new, old, atol=ATOL):
    for n, o in zip(new, old):
        assert len(n) == len(o) > 0
        torch.testing.assert_close(n.scores, o.scores, atol=atol, rtol=0)
        torch.testing.assert_close(n.pred_boxes.tensor, o.pred_boxes.tensor, atol=1e-4, rtol=0)
        torch.testing.assert_close(n.pred_masks, o.pred_masks, atol=atol, rtol=0)
        assert torch.equal(n.pred_classes, o.pred_classes)


@pytest.mark.parametrize("cls", [EJROIHeads, EJCascadeROIHeads])
@pytest.mark.parametrize("aligned", [True, False])
def test_7x7_pooler_at_ratio_2_is_the_averaged_14x14_pooler_at_ratio_1(cls, aligned):
    """The efficient model's box pooler: the same predictions, losses and gradients as the
    14x14 RoIs at ratio 1 average-pooled by 2 (up to float summation order)."""
    new = _heads(cls, sampling_ratio=2, resolution=7, aligned=aligned)
    old = _heads(cls, sampling_ratio=1, resolution=14, downsample=2, aligned=aligned)
    old.load_state_dict(new.state_dict())
    pooled = []
    old.box_pooler.pooler.register_forward_hook(lambda m, i, out: pooled.append(out.shape[2:]))
    _assert_same_predictions(_predict(new), _predict(old))
    assert pooled and all(size == (14, 14) for size in pooled)  # the old one pools 14x14
    if not aligned:
        return  # the training path does not depend on the RoIAlign flavour
    new_losses, new_feats = _train_step(new)
    old_losses, old_feats = _train_step(old)
    assert new_losses.keys() == old_losses.keys() and "loss_mask" in new_losses
    for k in new_losses:
        torch.testing.assert_close(new_losses[k], old_losses[k], atol=ATOL, rtol=0)
    # gradients: equal up to float rounding, 1e-5 of each gradient's largest entry
    for k in new_feats:
        scale = old_feats[k].grad.abs().max()
        assert scale > 1e-5
        torch.testing.assert_close(new_feats[k].grad, old_feats[k].grad, atol=ATOL * scale, rtol=0)
    for (name, p_new), p_old in zip(new.named_parameters(), old.parameters()):
        if p_new.grad is not None:
            scale = p_old.grad.abs().max()
            torch.testing.assert_close(p_new.grad, p_old.grad, atol=ATOL * scale, rtol=0, msg=name)


def test_the_efficient_config_states_its_7x7_box_pooler():
    from sa_ejhead.model_zoo import get_config_file

    cfg = LazyConfig.load(get_config_file("common/models/mask_rcnn_safpn_ejhead_efficient.py"))
    roi = cfg.model.roi_heads
    assert (roi.box_pooler.output_size, roi.box_pooler.sampling_ratio) == (7, 2)
    assert (roi.box_head.input_shape.height, roi.box_head.input_shape.width) == (7, 7)
    assert roi.get("box_refinement_downsample", 1) == 1 and roi.mask_pooler.output_size == 14
    assert not roi.get("threaded_pooling", False)  # a model-zoo config: CPU threading is opt-in


@pytest.mark.parametrize("cls", [EJROIHeads, EJCascadeROIHeads])
def test_adaptive_ratio_average_pools_the_14x14_rois(cls):
    heads = _heads(cls, sampling_ratio=0, downsample=2)
    pooled, refined = [], []
    heads.box_pooler.pooler.register_forward_hook(lambda m, i, out: pooled.append(out.shape))
    heads.refinement.register_forward_pre_hook(lambda m, args: refined.append(args[0].shape))
    out = _predict(heads)
    stages = 2 if cls is EJCascadeROIHeads else 1
    assert len(pooled) == stages and all(s[2:] == (14, 14) for s in pooled)  # every stage
    assert [s[2:] for s in refined] == [(7, 7)] * stages + [(14, 14)]  # the mask RoIs: 14x14
    assert all(len(o) > 0 for o in out)


# --- (b) box RoIs refined in chunks at inference ----------------------------------------------


@pytest.mark.parametrize("cls", [EJROIHeads, EJCascadeROIHeads])
def test_box_rois_are_refined_in_chunks_at_inference_in_every_stage(cls):
    """The refinement never sees more than ``box_inference_chunk`` box RoIs at inference, in
    every cascade stage (the cascade ignored the chunk before the poolers were refined), and the
    predictions are those of the unchunked heads."""
    heads = _heads(cls, box_inference_chunk=24, refinement_scope="box")
    whole = _heads(cls, box_inference_chunk=0, refinement_scope="box")
    stage_rows = _Calls(heads.box_head[0] if cls is EJCascadeROIHeads else heads.box_head)
    if cls is EJCascadeROIHeads:
        heads.box_head[1].register_forward_pre_hook(lambda m, a: stage_rows.rows.append(len(a[0])))
    refined = _Calls(heads.refinement)
    _assert_same_predictions(_predict(heads), _predict(whole))
    stages = 2 if cls is EJCascadeROIHeads else 1
    assert len(stage_rows.rows) == stages and min(stage_rows.rows) > 24
    chunks = [min(24, n - s) for n in stage_rows.rows for s in range(0, n, 24)]
    assert refined.rows == chunks  # e.g. 80 RoIs: 24 + 24 + 24 + 8 in each stage
    # with autograd recording (training, or a caller that wants gradients) they go at once
    refined.rows.clear()
    stage_rows.rows.clear()
    heads(None, _features(), _proposals())
    assert refined.rows == stage_rows.rows


# --- activation checkpointing of the pooling + refinement in training ------------------------


def _saved_bytes(heads):
    """Bytes of the tensors autograd keeps for the backward of a training forward (parameters
    and the input feature maps excluded), and the train step's losses and feature gradients."""
    sizes = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in kept:
            sizes[storage.data_ptr()] = storage.nbytes()
        return t

    feats = _features(requires_grad=True)
    kept = {p.untyped_storage().data_ptr() for p in heads.parameters()}
    kept |= {f.untyped_storage().data_ptr() for f in feats.values()}
    heads.train()
    torch.manual_seed(1)
    with EventStorage(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, losses = heads(None, feats, _proposals(), _targets())
    sum(losses.values()).backward()
    return sum(sizes.values()), losses, feats


@pytest.mark.slow
@pytest.mark.parametrize("cls", [EJROIHeads, EJCascadeROIHeads])
@pytest.mark.parametrize("downsample", [1, 2])
@pytest.mark.parametrize("chunk", [0, 256, 24])
def test_checkpointed_refinement_gives_the_same_losses_and_gradients(cls, downsample, chunk):
    heads = _heads(cls, downsample=downsample)
    # the inference chunk plays no part in training
    checkpointed = _heads(
        cls,
        downsample=downsample,
        checkpoint_refinement=True,
        checkpoint_chunk=chunk,
        box_inference_chunk=16 if chunk != 24 else 0,
    )
    calls = []
    # a pre-hook: the recomputation stops once it has rebuilt what the backward needs
    checkpointed.refinement.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    plain_bytes, plain_losses, plain_feats = _saved_bytes(heads)
    ckpt_bytes, ckpt_losses, ckpt_feats = _saved_bytes(checkpointed)
    # box (per stage) and mask RoIs, each refined twice: in the forward and again in the backward;
    # with chunks of 24, the 64 sampled box RoIs go as 24 + 24 + 16 each time
    stages = 2 if cls is EJCascadeROIHeads else 1
    if chunk == 24:
        assert calls[:3] == [24, 24, 16]
        assert len(calls) > 2 * (stages + 1)
    else:
        assert len(calls) == 2 * (stages + 1)
    assert ckpt_losses.keys() == plain_losses.keys() and "loss_mask" in ckpt_losses

    def same(a, b, name):
        if chunk == 24:  # per-RoI ops in other batches: the same up to float summation order
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
        else:
            assert torch.equal(a, b), name

    for k in plain_losses:
        same(ckpt_losses[k], plain_losses[k], k)
    for k in plain_feats:
        same(ckpt_feats[k].grad, plain_feats[k].grad, k)
    for (name, p), q in zip(checkpointed.named_parameters(), heads.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            same(p.grad, q.grad, name)
    assert checkpointed.refinement.conv1.weight.grad.abs().sum() > 0
    # the pooled RoIs and the refinement's inner maps are no longer kept: at least one pooled
    # box-RoI tensor less (R x C x S x S floats)
    rois = sum(len(p) for p in _proposals()) if cls is EJROIHeads else 0
    assert ckpt_bytes < plain_bytes - rois * 4 * C * (14 // downsample) ** 2


def test_checkpointed_refinement_is_training_only(monkeypatch):
    import sa_ejhead.modeling.poolers as poolers

    calls = []

    def checkpoint(fn, *args, **kwargs):
        calls.append(fn.__self__)
        return fn(*args)

    monkeypatch.setattr(poolers, "checkpoint", checkpoint)
    heads = _heads(checkpoint_refinement=True)
    _predict(heads)
    assert calls == []
    _train_step(heads)
    assert calls == [heads.box_pooler, heads.mask_pooler]
    calls.clear()
    box_only = _heads(checkpoint_refinement=True, refinement_scope="box")
    _train_step(box_only)  # the mask RoIs are not refined: nothing to checkpoint
    assert calls == [box_only.box_pooler]
