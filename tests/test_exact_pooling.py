"""The efficient model's box RoIs pooled directly at the downsampled size (docs/design.md, "Exact
downsampled box pooling"): with a fixed sampling ratio s, a k x k average pool of an S x S
RoIAlign is an (S/k) x (S/k) RoIAlign with ratio k*s. Checked on torchvision's op, on the EJ-Head
(predictions, losses, gradients; single-stage and cascade) and through the export."""

import copy
import tempfile

import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import roi_align

from detectron2.config import get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
    build_roi_heads,
)
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from sa_ejhead.config import add_sa_ejhead_config
from sa_ejhead.modeling import (
    BoundaryRefinement,
    EJCascadeROIHeads,
    EJFastRCNNConvFCHead,
    EJROIHeads,
    ThreadedROIAlign,
    direct_box_pooler,
)

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


def _heads(cls=EJROIHeads, sampling_ratio=2, aligned=True, downsample=2, **kwargs):
    res = 14 // downsample
    pooler_type = "ROIAlignV2" if aligned else "ROIAlign"

    def pooler():
        # level 2 for boxes under 32 pixels, 3 above (both levels in use)
        return ROIPooler(14, (1 / 4, 1 / 8), sampling_ratio, pooler_type, 32, canonical_level=3)

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
        box_pooler=pooler(),
        mask_in_features=["p2", "p3"],
        mask_pooler=ROIPooler(14, (1 / 4, 1 / 8), 0, "ROIAlignV2", canonical_box_size=32),
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
    torch.manual_seed(0)
    return cls(**args)


def _old_path(heads):
    """The same heads (same weights) on the old path: the 14x14 box pooler, then avg pool."""
    old = copy.deepcopy(heads)
    old.box_direct_pooler = None
    return old


class _Calls:
    """Records the output shapes of a module's forwards."""

    def __init__(self, module):
        self.shapes = []
        module.register_forward_hook(lambda _m, _i, out: self.shapes.append(tuple(out.shape)))


@pytest.mark.parametrize("aligned", [True, False])
def test_direct_pooler_is_built_for_a_fixed_ratio(aligned):
    heads = _heads(sampling_ratio=2, aligned=aligned)
    direct = heads.box_direct_pooler
    assert direct is not None and direct.output_size == (7, 7)
    assert heads.box_pooler.output_size == (14, 14)  # the configured pooler is unchanged
    assert (direct.canonical_box_size, direct.canonical_level) == (32, 3)
    assert (direct.min_level, direct.max_level) == (2, 3)
    for level, fine in zip(direct.level_poolers, heads.box_pooler.level_poolers):
        assert (level.sampling_ratio, level.aligned) == (4, aligned)
        assert level.spatial_scale == fine.spatial_scale
        # threaded_pooling (on by default) is kept, with the same threshold
        assert type(level) is type(fine) is ThreadedROIAlign
        assert level.min_rois_per_thread == fine.min_rois_per_thread
    assert not any(True for _ in direct.parameters())  # checkpoints unchanged
    assert all("box_direct_pooler" not in k for k in heads.state_dict())


@pytest.mark.parametrize("aligned", [True, False])
def test_direct_path_gives_the_old_predictions(aligned):
    heads = _heads(sampling_ratio=2, aligned=aligned).eval()
    old = _old_path(heads)
    fine_calls = _Calls(heads.box_pooler)
    old_fine_calls = _Calls(old.box_pooler)
    feats, proposals = _features(), _proposals()
    with torch.no_grad():
        boxes = [p.proposal_boxes for p in proposals]
        new_x = heads._pool_box_features([feats["p2"], feats["p3"]], boxes)
        old_x = F.avg_pool2d(heads.box_pooler([feats["p2"], feats["p3"]], boxes), 2)
        assert new_x.shape == (80, C, 7, 7)
        torch.testing.assert_close(new_x, old_x, atol=ATOL, rtol=0)
        new_scores, new_deltas = heads._box_predictions(feats, proposals)
        old_scores, old_deltas = old._box_predictions(feats, proposals)
        torch.testing.assert_close(new_scores, old_scores, atol=ATOL, rtol=0)
        torch.testing.assert_close(new_deltas, old_deltas, atol=ATOL, rtol=0)
        new_out, _ = heads(None, feats, _proposals())
        old_out, _ = old(None, feats, _proposals())
    assert len(fine_calls.shapes) == 1  # only the explicit call above: never in the heads
    assert old_fine_calls.shapes == [(80, C, 14, 14)] * 2
    for n, o in zip(new_out, old_out):
        assert len(n) == len(o) > 0
        torch.testing.assert_close(n.scores, o.scores, atol=ATOL, rtol=0)
        torch.testing.assert_close(n.pred_boxes.tensor, o.pred_boxes.tensor, atol=1e-4, rtol=0)
        assert torch.equal(n.pred_classes, o.pred_classes)


def _train_step(heads):
    heads.train()
    feats = _features(requires_grad=True)
    torch.manual_seed(1)  # the proposal and interleaving sampling
    with EventStorage():
        _, losses = heads(None, feats, _proposals(), _targets())
    sum(losses.values()).backward()
    return losses, feats


@pytest.mark.parametrize("cls", [EJROIHeads, EJCascadeROIHeads])
def test_direct_path_gives_the_old_losses_and_gradients(cls):
    heads = _heads(cls, sampling_ratio=2)
    assert heads.box_direct_pooler is not None
    old = _old_path(heads)
    fine_calls = _Calls(heads.box_pooler)
    new_losses, new_feats = _train_step(heads)
    old_losses, old_feats = _train_step(old)
    assert fine_calls.shapes == []
    assert new_losses.keys() == old_losses.keys() and "loss_mask" in new_losses
    for k in new_losses:
        torch.testing.assert_close(new_losses[k], old_losses[k], atol=ATOL, rtol=0)
    # gradients: equal up to float rounding, 1e-5 of each gradient's largest entry
    for k in new_feats:
        scale = old_feats[k].grad.abs().max()
        assert scale > 1e-5
        torch.testing.assert_close(new_feats[k].grad, old_feats[k].grad, atol=ATOL * scale, rtol=0)
    # and so do the parameters behind the RoIs (refinement, box head)
    for (name, p_new), p_old in zip(heads.named_parameters(), old.parameters()):
        if p_new.grad is not None:
            scale = p_old.grad.abs().max()
            torch.testing.assert_close(p_new.grad, p_old.grad, atol=ATOL * scale, rtol=0, msg=name)


def test_threaded_direct_path_gives_the_old_predictions():
    heads = _heads(sampling_ratio=1).eval()
    for level in heads.box_direct_pooler.level_poolers:
        level.min_rois_per_thread = 1
    old = _old_path(heads)
    feats, previous = _features(), torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert heads.box_direct_pooler.level_poolers[0].num_chunks(feats["p2"], 80) == 2
        with torch.no_grad():
            new = heads._box_predictions(feats, _proposals())
            ref = old._box_predictions(feats, _proposals())
    finally:
        torch.set_num_threads(previous)
    for n, o in zip(new, ref):
        torch.testing.assert_close(n, o, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cls", [EJROIHeads, EJCascadeROIHeads])
def test_adaptive_ratio_keeps_the_old_path(cls):
    heads = _heads(cls, sampling_ratio=0).eval()
    assert heads.box_direct_pooler is None
    calls = _Calls(heads.box_pooler)
    with torch.no_grad():
        out, _ = heads(None, _features(), _proposals())
    assert calls.shapes[0] == (80, C, 14, 14)  # the full 14x14 box RoIs, then the avg pool
    assert all(shape[2:] == (14, 14) for shape in calls.shapes)  # every cascade stage
    assert all(len(o) > 0 for o in out)


def test_no_direct_pooler_without_downsampling_or_for_other_poolers():
    assert _heads(sampling_ratio=2, downsample=1).box_direct_pooler is None
    roi_pool = ROIPooler(14, (1 / 4, 1 / 8), 2, "ROIPool")  # max pooling: no identity
    assert direct_box_pooler(roi_pool, 2) is None
    assert direct_box_pooler(ROIPooler(14, (1 / 4,), 2, "ROIAlignRotated"), 2) is None
    assert direct_box_pooler(ROIPooler(14, (1 / 4,), 2, "ROIAlignV2"), 3) is None  # 14 % 3
    assert direct_box_pooler(ROIPooler(14, (1 / 4,), 2, "ROIAlignV2"), 1) is None
    plain = direct_box_pooler(ROIPooler(14, (1 / 4,), 3, "ROIAlign"), 2)
    level = plain.level_poolers[0]
    assert type(level).__name__ == "ROIAlign" and (level.sampling_ratio, level.aligned) == (
        6,
        False,
    )


def _yacs_heads(sampling_ratio):
    cfg = get_cfg()
    add_sa_ejhead_config(cfg)
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NAME = "EJROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = sampling_ratio
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = C
    cfg.MODEL.EJ_HEAD.BOX_REFINEMENT_DOWNSAMPLE = 2
    shapes = {"p2": ShapeSpec(channels=C, stride=4), "p3": ShapeSpec(channels=C, stride=8)}
    return build_roi_heads(cfg, shapes)


def test_yacs_config_builds_the_direct_pooler():
    heads = _yacs_heads(sampling_ratio=2)
    assert heads.box_pooler.output_size == (14, 14)
    assert heads.box_direct_pooler.output_size == (7, 7)
    assert heads.box_direct_pooler.level_poolers[0].sampling_ratio == 4
    assert _yacs_heads(sampling_ratio=0).box_direct_pooler is None


# ---------------------------------------------------------------------------------------------
# the efficient model: LazyConfig, tracing and export


def _tiny_efficient(sampling_ratio):
    from _helpers import tiny_lazy_config

    from sa_ejhead.model_zoo import get_config_file

    path = get_config_file("common/models/mask_rcnn_safpn_ejhead_efficient.py")
    model_cfg = tiny_lazy_config("unused", "unused", "unused", model_config=path).model
    model_cfg.roi_heads.refinement.bottleneck_channels = 8
    model_cfg.roi_heads.box_head.input_shape = ShapeSpec(channels=32, height=7, width=7)
    model_cfg.roi_heads.box_pooler.sampling_ratio = sampling_ratio
    torch.manual_seed(0)
    return instantiate(model_cfg).eval()


def _image(height, width, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=g).float()


def test_efficient_config_with_a_fixed_ratio_matches_the_old_path():
    model = _tiny_efficient(sampling_ratio=2)
    heads = model.roi_heads
    assert heads.box_pooler.output_size == (14, 14) and heads.box_direct_pooler is not None
    old = copy.deepcopy(model)
    old.roi_heads.box_direct_pooler = None
    heads.box_predictor.test_score_thresh = old.roi_heads.box_predictor.test_score_thresh = 0.0
    inputs = [{"image": _image(64, 80, 0)}]
    with torch.no_grad():
        (new,), (ref,) = model(inputs), old(inputs)
    new, ref = new["instances"], ref["instances"]
    assert len(new) == len(ref) > 0
    torch.testing.assert_close(new.scores, ref.scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(new.pred_boxes.tensor, ref.pred_boxes.tensor, atol=1e-3, rtol=0)


def test_efficient_model_with_the_direct_pooler_exports():
    """TorchScript traces the direct pooler (7x7 RoIAlign at ratio 4, no 14x14 box RoIAlign) and
    matches eager; ONNX too where onnxruntime is installed."""
    from _helpers import onnx_nodes

    from sa_ejhead.export import check_parity, condition_random_heads, export_formats

    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = _tiny_efficient(sampling_ratio=2)
    model.roi_heads.box_predictor.test_score_thresh = 0.01
    model = condition_random_heads(model, [_image(64, 80, 0)])
    with tempfile.TemporaryDirectory() as folder:
        runtimes = export_formats(model, _image(64, 80, 0), folder, num_threads=1)
        runtimes = {k: v["model"] for k, v in runtimes.items()}
        graph = str(torch.jit.load(runtimes["torchscript"].path).inlined_graph)
        onnx_graph = onnx.load(runtimes["onnxruntime"].path).graph
        inputs = [{"image": _image(64, 80, 0)}, {"image": _image(72, 97, 1)}]
        report = check_parity(model, runtimes, inputs)
    # one RoIAlign per level in the box and the mask pooler: the box ones 7x7 at ratio 4
    assert graph.count("torchvision::roi_align") == 8
    roi_aligns = [
        {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        for n in onnx_nodes(onnx_graph)
        if n.op_type == "RoiAlign"
    ]
    shapes = sorted(
        (r["output_height"], r["output_width"], r["sampling_ratio"]) for r in roi_aligns
    )
    assert shapes == [(7, 7, 4)] * 4 + [(14, 14, 0)] * 4
    for runtime, result in report.items():
        assert result["summary"]["expected"] > 0, runtime
        assert result["summary"]["ok"], (runtime, result["images"])
    assert report["torchscript"]["summary"]["box_max_abs"] == 0.0


# --- box RoIs in chunks at inference ------------------------------------------------------------


@pytest.mark.parametrize("downsample", [1, 2])
def test_box_inference_in_chunks_gives_the_same_predictions(downsample):
    heads = _heads(downsample=downsample, box_inference_chunk=24).eval()
    whole = copy.deepcopy(heads)
    whole.box_inference_chunk = 0
    sizes = []
    heads.refinement.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    feats, proposals = _features(), _proposals()
    with torch.no_grad():
        chunked = heads._box_predictions(feats, proposals)
        assert sizes == [24, 24, 24, 8]  # 80 RoIs
        at_once = whole._box_predictions(feats, proposals)
    for a, b in zip(chunked, at_once):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    # with autograd on (training, or a caller that wants gradients) the RoIs go at once
    sizes.clear()
    heads._box_predictions(feats, proposals)
    assert sizes == [80]


def test_box_inference_chunk_is_checked():
    with pytest.raises(ValueError, match="box_inference_chunk"):
        _heads(box_inference_chunk=-1)
    with pytest.raises(ValueError, match="checkpoint_chunk"):
        _heads(checkpoint_chunk=2.5)


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


@pytest.mark.parametrize("cls", [EJROIHeads, EJCascadeROIHeads])
@pytest.mark.parametrize("downsample", [1, 2])
@pytest.mark.parametrize("chunk", [0, 256, 24])
def test_checkpointed_refinement_gives_the_same_losses_and_gradients(cls, downsample, chunk):
    heads = _heads(cls, downsample=downsample)
    checkpointed = copy.deepcopy(heads)
    checkpointed.checkpoint_refinement = True
    checkpointed.checkpoint_chunk = chunk
    # the inference chunk plays no part in training
    checkpointed.box_inference_chunk = 16 if chunk != 24 else 0
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


def test_checkpointed_refinement_is_training_only():
    heads = _heads(checkpoint_refinement=True).eval()
    plain = copy.deepcopy(heads)
    plain.checkpoint_refinement = False
    with torch.no_grad():
        a, b = heads._box_predictions(_features(), _proposals()), plain._box_predictions(
            _features(), _proposals()
        )
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not heads._checkpointing() and not heads._checkpointing(mask=True)
    heads.train()
    assert heads._checkpointing() and heads._checkpointing(mask=True)
    heads.refinement_scope = "box"  # the mask RoIs are not refined: nothing to checkpoint
    assert heads._checkpointing() and not heads._checkpointing(mask=True)
