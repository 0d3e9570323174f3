"""Tests of the EJ-Head ROI heads: switches, interleaving, shared refinement, both config systems."""

import inspect

import pytest
import torch

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    CascadeROIHeads,
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
    StandardROIHeads,
    build_roi_heads,
)
from detectron2.structures import BitMasks, Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from sa_ejhead.config import add_sa_ejhead_config
from sa_ejhead.modeling import (
    BoundaryRefinement,
    EJCascadeROIHeads,
    EJFastRCNNConvFCHead,
    EJROIHeads,
    RefinedROIPooler,
    ThreadedROIAlign,
)

C = 8  # feature channels
K = 3  # classes
IMAGE = (64, 64)
SHAPES = {"p2": ShapeSpec(channels=C, stride=4), "p3": ShapeSpec(channels=C, stride=8)}
GT_BOXES = torch.tensor([[4.0, 4.0, 28.0, 30.0], [34.0, 30.0, 60.0, 60.0]])
GT_CLASSES = torch.tensor([0, 2])
# Controlled predictor: x-shift of the regressed box, in box widths, per class (Box2BoxTransform
# weights 10,10,5,5: delta dx = 10 * shift). Class 1 wins the foreground argmax.
SHIFTS = [0.1, 0.2, -0.1]


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "p2": torch.randn(2, C, 16, 16, generator=g),
        "p3": torch.randn(2, C, 8, 8, generator=g),
    }


def _targets(with_gt=(True, True)):
    out = []
    for has in with_gt:
        t = Instances(IMAGE)
        n = 2 if has else 0
        t.gt_boxes = Boxes(GT_BOXES[:n].clone())
        t.gt_classes = GT_CLASSES[:n].clone()
        masks = torch.zeros(n, *IMAGE, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(GT_BOXES[:n].int().tolist()):
            masks[i, y0:y1, x0 + 2 : x1 - 2] = True
        t.gt_masks = BitMasks(masks)
        out.append(t)
    return out


def _proposals(num_jitter=20, seed=0):
    """Per image: jittered copies of the GT boxes (positives) and far-away background boxes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        boxes = [GT_BOXES.repeat(num_jitter, 1) + torch.randn(2 * num_jitter, 4, generator=g)]
        # background: small boxes in the empty corners (their regressions never reach IoU 0.5)
        boxes.append(torch.tensor([[40.0, 2.0, 50.0, 10.0], [2.0, 44.0, 12.0, 56.0]]))
        p = Instances(IMAGE)
        p.proposal_boxes = Boxes(torch.cat(boxes).clamp(0, 63))
        p.objectness_logits = torch.randn(len(p.proposal_boxes), generator=g)
        out.append(p)
    return out


class _RecordingMaskHead(MaskRCNNConvUpsampleHead):
    """Records the instances the mask head trains on."""

    def forward(self, x, instances):
        self.seen = instances
        return super().forward(x, instances)


def _heads(cls=EJROIHeads, box_res=14, mask_head_cls=_RecordingMaskHead, **kwargs):
    args = dict(
        num_classes=K,
        batch_size_per_image=64,
        positive_fraction=0.5,
        proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False),
        box_in_features=["p2", "p3"],
        box_pooler=ROIPooler(box_res, (1 / 4, 1 / 8), 0, "ROIAlignV2"),
        box_head=EJFastRCNNConvFCHead(
            ShapeSpec(channels=C, height=box_res, width=box_res), conv_dims=[], fc_dims=[16]
        ),
        box_predictor=FastRCNNOutputLayers(
            ShapeSpec(channels=16),
            box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
            num_classes=K,
        ),
        mask_in_features=["p2", "p3"],
        mask_pooler=ROIPooler(14, (1 / 4, 1 / 8), 0, "ROIAlignV2"),
        mask_head=mask_head_cls(
            ShapeSpec(channels=C, height=14, width=14), num_classes=K, conv_dims=[C, C]
        ),
    )
    args.update(kwargs)
    return cls(**args)


def _control_predictor(heads, shifts=SHIFTS):
    """Make the box predictor output fixed deltas (an x-shift per class) and fixed scores."""
    with torch.no_grad():
        pred = heads.box_predictor
        pred.bbox_pred.weight.zero_()
        pred.bbox_pred.bias.zero_()
        for k, s in enumerate(shifts):
            pred.bbox_pred.bias[4 * k] = 10.0 * s
        pred.cls_score.weight.zero_()
        pred.cls_score.bias.copy_(torch.tensor([0.0, 1.0, 0.5, 0.0]))


def _shift(boxes, s):
    w = boxes[:, 2] - boxes[:, 0]
    return boxes + torch.stack([s * w, 0 * w, s * w, 0 * w], dim=1)


def _contains_row(rows, row, atol=1e-4):
    return bool(((rows - row).abs() <= atol).all(dim=1).any()) if len(rows) else False


def _train(heads, proposals, targets, seed=0):
    heads.train()
    torch.manual_seed(seed)
    with EventStorage() as storage:
        _, losses = heads(None, _features(), proposals, targets)
        scalars = {k: v[0] for k, v in storage.latest().items()}
    return losses, scalars


# ---------------------------------------------------------------------------------------------
# 2. all switches off == StandardROIHeads (yacs, registry and from_config at the same time)


def _yacs_cfg(name, **ej):
    cfg = get_cfg()
    add_sa_ejhead_config(cfg)
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NAME = name
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3"]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = C
    cfg.MODEL.EJ_HEAD.INTERLEAVE = False
    cfg.MODEL.EJ_HEAD.REFINEMENT = "none"
    if "Cascade" in name:
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    for k, v in ej.items():
        setattr(cfg.MODEL.EJ_HEAD, k, v)
    return cfg


@pytest.mark.parametrize(
    "standard, ours", [("StandardROIHeads", "EJROIHeads"), ("CascadeROIHeads", "EJCascadeROIHeads")]
)
def test_all_switches_off_equals_detectron2(standard, ours):
    assert ROI_HEADS_REGISTRY.get(ours) in (EJROIHeads, EJCascadeROIHeads)
    torch.manual_seed(0)
    ref = build_roi_heads(_yacs_cfg(standard), SHAPES)
    heads = build_roi_heads(_yacs_cfg(ours), SHAPES)
    assert type(heads).__name__ == ours and heads.refinement is None
    heads.load_state_dict(ref.state_dict())  # strict: same parameter names

    ref_losses, _ = _train(ref, _proposals(), _targets())
    losses, _ = _train(heads, _proposals(), _targets())
    assert ref_losses.keys() == losses.keys() and "loss_mask" in losses
    for k in losses:
        assert torch.equal(ref_losses[k], losses[k]), k

    ref.eval(), heads.eval()
    with torch.no_grad():
        ref_out, _ = ref(None, _features(), _proposals())
        out, _ = heads(None, _features(), _proposals())
    for a, b in zip(ref_out, out):
        assert len(b) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_masks, b.pred_masks)


def test_yacs_switches_build_every_row():
    cfg = _yacs_cfg("EJROIHeads", INTERLEAVE=True, REFINEMENT="conv2", REFINEMENT_SCOPE="box")
    cfg.MODEL.ROI_BOX_HEAD.NAME = "EJFastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
    heads = build_roi_heads(cfg, SHAPES)
    assert heads.interleave and heads.refinement_scope == "box"
    assert heads.refinement.mode == "conv2" and heads.box_pooler.output_size == (14, 14)
    assert heads.box_pooler.refinement is heads.refinement and heads.mask_pooler.refinement is None
    assert heads.box_head.fc1.in_features == C * 196

    # the efficient model's levers: bottleneck refinement, box RoIs pooled 7x7 at ratio 2,
    # memory levers
    cfg.MODEL.EJ_HEAD.REFINEMENT = "residual"
    cfg.MODEL.EJ_HEAD.REFINEMENT_CHANNELS = 4
    cfg.MODEL.EJ_HEAD.CHECKPOINT_REFINEMENT = True
    cfg.MODEL.EJ_HEAD.CHECKPOINT_CHUNK = 32
    cfg.MODEL.EJ_HEAD.BOX_INFERENCE_CHUNK = 16
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2
    heads = build_roi_heads(cfg, SHAPES)
    assert heads.box_pooler.output_size == (7, 7) and heads.box_head.fc1.in_features == C * 49
    assert heads.refinement.reduce.out_channels == 4
    for pooler in (heads.box_pooler, heads.mask_pooler):
        assert (pooler.checkpoint, pooler.checkpoint_chunk) == (True, 32)
    assert (heads.box_pooler.inference_chunk, heads.mask_pooler.inference_chunk) == (16, 0)
    losses, _ = _train(heads, _proposals(), _targets())
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", ["EJROIHeads", "EJCascadeROIHeads"])
def test_threaded_pooling_is_opt_in_and_keeps_the_state_dict(name):
    cfg = _yacs_cfg(name)
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = name == "EJCascadeROIHeads"
    plain = build_roi_heads(cfg, SHAPES)
    cfg.MODEL.EJ_HEAD.THREADED_POOLING = True
    threaded = build_roi_heads(cfg, SHAPES)
    for pooler in ("box_pooler", "mask_pooler"):
        levels = getattr(threaded, pooler).level_poolers
        assert all(type(m) is ThreadedROIAlign and m.threaded_inference for m in levels)
        assert not any(
            isinstance(m, ThreadedROIAlign) for m in getattr(plain, pooler).level_poolers
        )
    assert threaded.state_dict().keys() == plain.state_dict().keys()
    # threaded in training only (the efficient model)
    cfg.MODEL.EJ_HEAD.THREADED_INFERENCE_POOLING = False
    training_only = build_roi_heads(cfg, SHAPES)
    poolers = [training_only.box_pooler, training_only.mask_pooler]
    levels = [m for p in poolers for m in p.level_poolers]
    assert levels and all(type(m) is ThreadedROIAlign and not m.threaded_inference for m in levels)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="Unknown refinement_scope 'mask'"):
        _heads(refinement_scope="mask")
    with pytest.raises(ValueError, match="exclusive"):
        _heads(interleave=True, train_on_pred_boxes=True)
    with pytest.raises(ValueError, match="box_refinement_downsample must be an integer >= 1"):
        _heads(box_refinement_downsample=0)
    with pytest.raises(ValueError, match="box_inference_chunk must be an integer >= 0"):
        _heads(box_inference_chunk=-1)
    with pytest.raises(ValueError, match="checkpoint_chunk must be an integer >= 0, got 2.5"):
        _heads(checkpoint_chunk=2.5)


def test_wrong_types_fail_at_construction():
    """A string where a module belongs fails when the heads are built, naming the expected
    type, not at the first forward."""
    with pytest.raises(TypeError, match=r"refinement must be an nn.Module .* or None, got str"):
        _heads(refinement="none")


# ---------------------------------------------------------------------------------------------
# 3. interleaving with a controlled box predictor


@pytest.mark.parametrize("append_gt", [True, False])
def test_interleave_trains_mask_on_regressed_boxes(append_gt):
    torch.manual_seed(0)
    heads = _heads(interleave=True, interleave_append_gt=append_gt, positive_fraction=1.0)
    _control_predictor(heads)
    proposals, targets = _proposals(), _targets()
    losses, scalars = _train(heads, proposals, targets)
    assert torch.isfinite(losses["loss_mask"])

    seen = heads.mask_head.seen
    assert len(seen) == 2
    for inst, props, tgt in zip(seen, proposals, targets):
        boxes = inst.proposal_boxes.tensor
        assert not boxes.requires_grad and len(inst) > 0
        # every mask RoI has IoU >= 0.5 with the GT it learns (mask targets cropped with it)
        ious = pairwise_iou(inst.proposal_boxes, inst.gt_boxes).diagonal()
        assert (ious >= 0.5).all()
        gt = tgt.gt_boxes.tensor
        is_gt = torch.tensor([_contains_row(gt, b, atol=0) for b in boxes])
        assert int(is_gt.sum()) == (len(gt) if append_gt else 0)
        # the regressed versions of the appended GT proposals are dropped
        for c, g in zip(tgt.gt_classes.tolist(), gt):
            assert not _contains_row(boxes, _shift(g[None], SHIFTS[c])[0])
        # the others are RPN proposals regressed with the deltas of their GT class
        for b, c in zip(boxes[~is_gt], inst.gt_classes[~is_gt].tolist()):
            original = _shift(b[None], -SHIFTS[c])[0]  # dw = 0: shift back by the same width
            assert _contains_row(props.proposal_boxes.tensor, original)
    assert scalars["roi_head/interleave_num_dropped_gt"] == 2.0  # both GT boxes, both images
    expected_pos = sum(len(i) for i in seen) / 2
    assert scalars["roi_head/interleave_num_pos"] == expected_pos


def test_interleave_background_uses_argmax_class_and_caps_positives():
    torch.manual_seed(0)
    heads = _heads(interleave=True, batch_size_per_image=512, positive_fraction=1.0)
    _control_predictor(heads)
    boxes = heads._regress_for_gt_classes(
        heads.box_predictor,
        heads.box_predictor(torch.zeros(3, 16)),
        [
            Instances(
                IMAGE, proposal_boxes=Boxes(GT_BOXES[[0, 1, 1]]), gt_classes=torch.tensor([0, 2, K])
            )
        ],
    )[0]
    # GT class 0 -> shift 0.1; GT class 2 -> -0.1; background -> argmax foreground class 1 -> 0.2
    expected = torch.cat(
        [_shift(GT_BOXES[[0]], 0.1), _shift(GT_BOXES[[1]], -0.1), _shift(GT_BOXES[[1]], 0.2)]
    )
    assert torch.allclose(boxes, expected, atol=1e-4)

    # 2 x 150 positive proposals per image -> at most 128 mask positives
    _, scalars = _train(heads, _proposals(num_jitter=150), _targets())
    assert scalars["roi_head/interleave_num_regressed_pos"] > 128
    assert [len(i) for i in heads.mask_head.seen] == [128, 128]


@pytest.mark.parametrize("append_gt", [True, False])
def test_interleave_no_gt_and_all_missed(append_gt):
    torch.manual_seed(0)
    heads = _heads(interleave=True, interleave_append_gt=append_gt)
    _control_predictor(heads, shifts=[3.0, 3.0, 3.0])  # every regressed box misses (IoU < 0.5)
    losses, scalars = _train(heads, _proposals(), _targets(with_gt=(True, False)))
    seen = heads.mask_head.seen
    assert scalars["roi_head/interleave_num_regressed_pos"] == 0
    assert len(seen[0]) == (2 if append_gt else 0) and len(seen[1]) == 0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for p in heads.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_interleave_no_gradient_through_boxes():
    torch.manual_seed(0)
    heads = _heads(interleave=True, refinement=BoundaryRefinement(C))
    losses, _ = _train(heads, _proposals(), _targets())
    losses["loss_mask"].backward()
    assert heads.mask_head.predictor.weight.grad is not None
    # the mask loss reaches neither the box head nor the box predictor (boxes are detached)
    for p in list(heads.box_head.parameters()) + list(heads.box_predictor.parameters()):
        assert p.grad is None


# ---------------------------------------------------------------------------------------------
# 4. the shared refinement


@pytest.mark.parametrize("scope", ["shared", "box"])
def test_shared_refinement_gets_both_gradients(scope):
    torch.manual_seed(0)
    heads = _heads(refinement=BoundaryRefinement(C), refinement_scope=scope, interleave=True)
    refinements = [m for m in heads.modules() if isinstance(m, BoundaryRefinement)]
    assert refinements == [heads.refinement]  # one module, not inside the box/mask heads
    losses, _ = _train(heads, _proposals(), _targets())

    def grads(loss):
        heads.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        return [p.grad for p in heads.refinement.parameters()]

    assert all(g is not None and g.abs().sum() > 0 for g in grads(losses["loss_cls"]))
    mask_grads = grads(losses["loss_mask"])
    if scope == "shared":
        assert all(g is not None and g.abs().sum() > 0 for g in mask_grads)
    else:
        assert all(g is None for g in mask_grads)


# ---------------------------------------------------------------------------------------------
# 5. inference


def test_inference_masks_on_post_nms_boxes_and_empty():
    torch.manual_seed(0)
    heads = _heads(
        refinement=BoundaryRefinement(C),
        interleave=True,
        box_refinement_downsample=2,
        box_head=FastRCNNConvFCHead(
            ShapeSpec(channels=C, height=7, width=7), conv_dims=[], fc_dims=[16]
        ),
    )
    heads.eval()
    with torch.no_grad():
        out, _ = heads(None, _features(), _proposals())
        assert all(len(o) > 0 and o.pred_masks.shape == (len(o), 1, 28, 28) for o in out)
        assert [len(i) for i in heads.mask_head.seen] == [len(o) for o in out]
        heads.box_predictor.test_score_thresh = 1.01  # no detections
        out, _ = heads(None, _features(), _proposals())
    assert [o.pred_masks.shape for o in out] == [(0, 1, 28, 28)] * 2


# ---------------------------------------------------------------------------------------------
# cascade


def _cascade_heads(**kwargs):
    args = dict(
        num_classes=K,
        batch_size_per_image=64,
        positive_fraction=1.0,
        proposal_matchers=[
            Matcher([t], [0, 1], allow_low_quality_matches=False) for t in (0.5, 0.6)
        ],
        box_in_features=["p2", "p3"],
        box_pooler=ROIPooler(14, (1 / 4, 1 / 8), 0, "ROIAlignV2"),
        box_heads=[
            EJFastRCNNConvFCHead(
                ShapeSpec(channels=C, height=14, width=14), conv_dims=[], fc_dims=[16]
            )
            for _ in range(2)
        ],
        box_predictors=[
            FastRCNNOutputLayers(
                ShapeSpec(channels=16),
                box2box_transform=Box2BoxTransform(w),
                num_classes=K,
                cls_agnostic_bbox_reg=True,
            )
            for w in [(10, 10, 5, 5), (20, 20, 10, 10)]
        ],
        mask_in_features=["p2", "p3"],
        mask_pooler=ROIPooler(14, (1 / 4, 1 / 8), 0, "ROIAlignV2"),
        mask_head=_RecordingMaskHead(
            ShapeSpec(channels=C, height=14, width=14), num_classes=K, conv_dims=[C, C]
        ),
        refinement=BoundaryRefinement(C),
        interleave=True,
    )
    args.update(kwargs)
    return EJCascadeROIHeads(**args)


def test_cascade_interleave_and_inference():
    torch.manual_seed(0)
    heads = _cascade_heads()
    losses, scalars = _train(heads, _proposals(), _targets(with_gt=(True, False)))
    assert {"loss_cls_stage1", "loss_box_reg_stage1", "loss_mask"} <= losses.keys()
    assert all(torch.isfinite(v) for v in losses.values())
    assert scalars["roi_head/interleave_num_dropped_gt"] == 1.0  # 2 GT in image 0, none in 1
    inst = heads.mask_head.seen[0]
    assert (pairwise_iou(inst.proposal_boxes, inst.gt_boxes).diagonal() >= 0.5).all()
    losses["loss_mask"].backward(retain_graph=True)
    assert all(p.grad is not None for p in heads.refinement.parameters())

    heads.eval()
    with torch.no_grad():
        out, _ = heads(None, _features(), _proposals())
    assert all(o.pred_masks.shape == (len(o), 1, 28, 28) for o in out)


# ---------------------------------------------------------------------------------------------
# 6. LazyConfig model files


@pytest.mark.parametrize(
    "name", ["mask_rcnn_ejhead", "mask_rcnn_safpn_ejhead", "cascade_mask_rcnn_safpn_ejhead"]
)
def test_lazy_config_builds_roi_heads(name):
    cfg = LazyConfig.load(f"configs/common/models/{name}.py")
    roi_heads = cfg.model.roi_heads
    assert roi_heads.interleave and roi_heads.refinement.mode == "residual"
    # shrink the head so the test stays fast; the structure is the config's
    roi_heads.refinement.channels = C
    heads_fc = roi_heads.box_heads if "cascade" in name else [roi_heads.box_head]
    for head in heads_fc:
        head.input_shape = ShapeSpec(channels=C, height=14, width=14)
        head.fc_dims = [16, 16]
    preds = roi_heads.box_predictors if "cascade" in name else [roi_heads.box_predictor]
    for pred in preds:
        pred.input_shape = ShapeSpec(channels=16)
    roi_heads.mask_head.input_shape = ShapeSpec(channels=C, height=14, width=14)
    roi_heads.mask_head.conv_dims = [C, C]
    heads = instantiate(roi_heads)
    assert isinstance(heads, EJCascadeROIHeads if "cascade" in name else EJROIHeads)
    assert heads.box_pooler.output_size == (14, 14)
    for pooler in (heads.box_pooler, heads.mask_pooler):  # one refinement for all RoIs
        assert isinstance(pooler, RefinedROIPooler) and pooler.refinement is heads.refinement
    box_heads = heads.box_head if "cascade" in name else [heads.box_head]
    assert all(type(h) is EJFastRCNNConvFCHead for h in box_heads)
    assert all(h.fc1.in_features == C * 196 for h in box_heads)  # 14x14 RoIs flattened


# ---------------------------------------------------------------------------------------------
# building blocks


def test_boundary_refinement_modes():
    torch.manual_seed(0)
    x = torch.randn(3, C, 14, 14)
    br = BoundaryRefinement(C)
    expected = x + br.conv2(torch.relu(br.conv1(x)))
    assert torch.allclose(br(x), expected, atol=1e-6)
    for n in (1, 2, 3):
        conv = BoundaryRefinement(C, mode=f"conv{n}")
        assert len(list(conv.children())) == n
        assert (conv(x) >= 0).all()  # ReLU after every conv, no shortcut
    assert torch.equal(BoundaryRefinement(C, mode="none")(x), x)
    slim = BoundaryRefinement(C, bottleneck_channels=2)
    assert slim(x).shape == x.shape and slim.conv1.in_channels == 2
    with pytest.raises(ValueError, match="Unknown refinement mode 'conv4'"):
        BoundaryRefinement(C, mode="conv4")
    with pytest.raises(ValueError, match="needs mode='residual'"):
        BoundaryRefinement(C, mode="conv2", bottleneck_channels=2)


@pytest.mark.parametrize("last_relu", [None, True])
@pytest.mark.parametrize("bottleneck", [0, 2])
def test_residual_refinement_output_and_gradients_match_the_formula(last_relu, bottleneck):
    """The block adds the shortcut in place on its last conv's output (no ReLU after it): the
    same output and the same gradients as the written-out formula, in training and inference."""
    torch.manual_seed(0)
    br = BoundaryRefinement(C, bottleneck_channels=bottleneck, last_relu=last_relu)
    x = torch.randn(3, C, 14, 14, requires_grad=True)
    convs = [getattr(br, n) for n in br._layer_names]

    def formula(inp):
        y = inp
        for i, conv in enumerate(convs):
            y = conv(y)
            if i < len(convs) - 1 or last_relu:
                y = torch.relu(y)
        return inp + y

    out, expected = br(x), formula(x)
    assert torch.equal(out, expected)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), [x] + list(br.parameters()))
    expected_grads = torch.autograd.grad((expected * weights).sum(), [x] + list(br.parameters()))
    for g, e in zip(grads, expected_grads):
        assert torch.equal(g, e)
    with torch.no_grad():
        assert torch.equal(br(x), expected)


def test_box_head_is_detectron2s_and_loads_a_layer_whole_or_not_at_all():
    shape = ShapeSpec(channels=C, height=14, width=14)
    torch.manual_seed(0)
    ref = FastRCNNConvFCHead(shape, conv_dims=[C], fc_dims=[16, 16])
    torch.manual_seed(0)
    head = EJFastRCNNConvFCHead(shape, conv_dims=[C], fc_dims=[16, 16])
    assert head.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(head.state_dict()[k], v), k  # the same init
    x = torch.randn(5, C, 14, 14)
    assert torch.equal(head(x), ref(x))
    # a 7x7 checkpoint: fc1's weight has another shape (dropped by the checkpointer), so its bias
    # is not loaded alone; the layers that fit are
    small_shape = ShapeSpec(channels=C, height=7, width=7)
    small = FastRCNNConvFCHead(small_shape, conv_dims=[C], fc_dims=[16, 16]).state_dict()
    state = {k: v for k, v in small.items() if k != "fc1.weight"}
    incompatible = head.load_state_dict(state, strict=False)
    assert set(incompatible.missing_keys) == {"fc1.weight", "fc1.bias"}
    assert torch.equal(head.fc1.bias, ref.fc1.bias) and torch.equal(
        head.fc2.bias, small["fc2.bias"]
    )


def test_heads_override_only_what_the_paper_changes():
    """The box, mask and cascade-stage forwards are Detectron2's: the refinement comes in through
    the poolers, so the three paths cannot disagree."""
    for ours, theirs in [(EJROIHeads, StandardROIHeads), (EJCascadeROIHeads, CascadeROIHeads)]:
        for method in ("_forward_box", "_forward_mask", "_run_stage", "_init_box_head"):
            theirs_method = inspect.getattr_static(theirs, method, None)
            if theirs_method is not None:
                assert inspect.getattr_static(ours, method) is theirs_method, (ours, method)


def test_the_refinement_is_saved_once_under_its_old_name():
    """Checkpoints keep ``roi_heads.refinement.*``: the poolers do not own the refinement."""
    heads = _heads(refinement=BoundaryRefinement(C))
    keys = list(heads.state_dict())
    expected = [f"refinement.conv{i}.{w}" for i in (1, 2) for w in ("weight", "bias")]
    assert [k for k in keys if "refinement" in k] == expected
    assert not any(k.startswith(("box_pooler.", "mask_pooler.")) for k in keys)
    assert [n for n, m in heads.named_modules() if m is heads.refinement] == ["refinement"]
    # a state_dict written before the poolers were refined (the same names) loads strictly
    other = _heads(refinement=BoundaryRefinement(C))
    other.load_state_dict(heads.state_dict())
    assert torch.equal(other.box_pooler.refinement.conv1.weight, heads.refinement.conv1.weight)
