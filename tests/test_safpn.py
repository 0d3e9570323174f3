"""SA-FPN (docs/design.md, SA-FPN): modes, odd sizes, Detectron2 FPN equivalence and checkpoints,
gradients, efficiency levers, and both config systems. Tiny and CPU-only."""

import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sa_ejhead  # noqa: F401  (registers build_resnet_safpn_backbone)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from _helpers import RES_FEATURES, tiny_resnet, tiny_yacs_config
from sa_ejhead.config import add_sa_ejhead_config
from sa_ejhead.modeling import SAFPN, build_resnet_safpn_backbone
from sa_ejhead.modeling.safpn import SAFPN_MODES, _match_size, _resize_nearest

IN_FEATURES = RES_FEATURES
MODES = list(SAFPN_MODES)
LAZY_MODEL = "configs/common/models/mask_rcnn_safpn.py"


def _neck(mode="sa", out_channels=16, seed=0, **kwargs):
    kwargs.setdefault("top_block", LastLevelMaxPool())
    neck = SAFPN(tiny_resnet(seed=seed), IN_FEATURES, out_channels, mode=mode, **kwargs)
    return neck.eval()


class _FloorPyramid(Backbone):
    """A non-ResNet bottom-up whose stride-2 layers round *down* (kernel 2, no padding)."""

    def __init__(self, width=8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, kernel_size=4, stride=4)
        self.downs = nn.ModuleList(nn.Conv2d(width, width, 2, stride=2) for _ in range(3))
        self._out_features = list(IN_FEATURES)
        self._out_feature_strides = {f: 4 * 2**i for i, f in enumerate(IN_FEATURES)}
        self._out_feature_channels = {f: width for f in IN_FEATURES}

    def forward(self, x):
        feats = [self.stem(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return dict(zip(IN_FEATURES, feats))


def _ceil_div(a, b):
    return -(-a // b)


# --- 1. modes, outputs, odd sizes -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_outputs_p2_to_p6_at_odd_size(mode):
    neck = _neck(mode)
    shapes = neck.output_shape()
    assert list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32, 64]
    assert {s.channels for s in shapes.values()} == {16}
    assert neck.size_divisibility == 32
    assert neck.padding_constraints == {"square_size": 0}
    h, w = 67, 93  # unpadded and odd: levels 17x24, 9x12, 5x6, 3x3, 2x2
    with torch.no_grad():
        out = neck(torch.randn(2, 3, h, w))
    assert list(out) == list(shapes)
    for name, t in out.items():
        stride = shapes[name].stride
        assert tuple(t.shape) == (2, 16, _ceil_div(h, stride), _ceil_div(w, stride)), name
        assert torch.isfinite(t).all()


def test_square_pad_and_size_divisibility_as_fpn():
    neck = _neck("sa", square_pad=1024)
    assert neck.padding_constraints == {"square_size": 1024}
    fpn = FPN(tiny_resnet(), IN_FEATURES, 16, top_block=LastLevelMaxPool(), square_pad=1024)
    assert neck.padding_constraints == fpn.padding_constraints
    assert neck.size_divisibility == fpn.size_divisibility
    assert neck.output_shape() == fpn.output_shape()
    # without top_block: p2..p5 only; from res3: p3..p5, size_divisibility stays the last stride
    assert list(_neck("sa", top_block=None).output_shape()) == ["p2", "p3", "p4", "p5"]
    neck3 = SAFPN(tiny_resnet(), IN_FEATURES[1:], 16, mode="sa")
    assert list(neck3(torch.randn(1, 3, 64, 64))) == ["p3", "p4", "p5"]
    assert neck3.size_divisibility == 32


def test_resize_and_match_helpers():
    x = torch.randn(1, 2, 7, 8)
    ref = torch.zeros(1, 1, 13, 16)
    up = _resize_nearest(x, ref)
    # on a ceil-halving pyramid, resizing to the exact size == 2x nearest upsample then crop
    expected = F.interpolate(x, scale_factor=2.0, mode="nearest")[..., :13, :16]
    assert torch.equal(up, expected)
    cropped = _match_size(torch.randn(1, 2, 7, 9), torch.zeros(1, 1, 6, 9))
    assert cropped.shape[-2:] == (6, 9)
    padded = _match_size(torch.ones(1, 2, 5, 5), torch.zeros(1, 1, 6, 7))
    assert padded.shape[-2:] == (6, 7)
    assert padded[..., 5:, :].abs().sum() == 0 and padded[..., :, 5:].abs().sum() == 0
    assert torch.equal(padded[..., :5, :5], torch.ones(1, 2, 5, 5))


@pytest.mark.parametrize("mode", MODES)
def test_floor_rounding_bottom_up(mode):
    """Down of an odd map is one larger than a floor-halving bottom-up's level: it is cropped."""
    torch.manual_seed(0)
    neck = SAFPN(_FloorPyramid(), IN_FEATURES, 8, mode=mode, top_block=LastLevelMaxPool())
    with torch.no_grad():
        out = neck(torch.randn(1, 3, 108, 100))  # levels 27x25, 13x12, 6x6, 3x3
    assert [tuple(t.shape[-2:]) for t in out.values()] == [
        (27, 25),
        (13, 12),
        (6, 6),
        (3, 3),
        (2, 2),
    ]


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="unknown mode 'fpn'"):
        _neck("fpn")
    with pytest.raises(ValueError, match="unknown fuse_type 'max'"):
        _neck("sa", fuse_type="max")
    with pytest.raises(ValueError, match="unknown fuse_position 'middle'"):
        _neck("sa", fuse_position="middle")
    with pytest.raises(ValueError, match="share_laterals=True needs both pathways"):
        _neck("buf", share_laterals=True)
    with pytest.raises(ValueError, match="fuse_position='before' needs both pathways"):
        _neck("td", fuse_position="before")
    with pytest.raises(ValueError, match="td_only_levels must be the finest levels"):
        _neck("sa", td_only_levels=["p3"])
    with pytest.raises(ValueError, match="td_only_levels must be the finest levels"):
        _neck("sa", td_only_levels=["p2", "p3", "p4", "p5"])
    with pytest.raises(ValueError, match="not log2 contiguous"):
        SAFPN(tiny_resnet(), ["res2", "res4"], 16)


# --- 2. td == Detectron2's FPN; the modes compose as docs/design.md says -----------------------


@pytest.mark.parametrize("norm,fuse_type", [("", "sum"), ("GN", "avg")])
def test_td_mode_is_detectron2_fpn(norm, fuse_type):
    kwargs = dict(norm=norm, fuse_type=fuse_type)
    fpn = FPN(tiny_resnet(seed=1), IN_FEATURES, 32, top_block=LastLevelMaxPool(), **kwargs)
    ours = SAFPN(
        tiny_resnet(seed=2), IN_FEATURES, 32, mode="td", top_block=LastLevelMaxPool(), **kwargs
    )
    assert list(ours.state_dict()) == list(fpn.state_dict())  # same names, same order
    ours.load_state_dict(fpn.state_dict(), strict=True)
    fpn.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        a, b = fpn.eval()(x), ours.eval()(x)
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _copy_by_name(src, dst):
    """Copy the parameters that ``dst`` has from ``src`` (a different mode of the neck)."""
    missing = dst.load_state_dict(src.state_dict(), strict=False).missing_keys
    assert missing == []


def _ref_bottom_up(neck, feats, fuse_upper):
    """B_i from the formulas of docs/design.md, with the neck's own convolutions."""
    lat = [getattr(neck, f"buf_lateral{s}")(f) for s, f in zip([2, 3, 4, 5], feats)]
    sums = []
    for k, s in enumerate([2, 3, 4, 5]):
        b = lat[k]
        if k > 0:
            b = b + getattr(neck, f"buf_down{s}")(sums[-1])
        if fuse_upper and k < 3:
            b = b + F.interpolate(lat[k + 1], scale_factor=2.0, mode="nearest")
        sums.append(b)
    return sums


def test_modes_follow_the_design_formulas():
    x = torch.randn(1, 3, 64, 128)
    sa = _neck("sa")
    necks = {m: _neck(m, seed=3) for m in ["td", "bu", "buf", "td+buf"]}
    for m in necks.values():
        _copy_by_name(sa, m)
    with torch.no_grad():
        feats = [sa.bottom_up(x)[f] for f in IN_FEATURES]
        out = {m: n(x) for m, n in necks.items()}
        out_sa = sa(x)
        for fuse_upper, mode in [(False, "bu"), (True, "buf")]:
            ref = _ref_bottom_up(sa, feats, fuse_upper)
            for s, b in zip([2, 3, 4, 5], ref):
                expected = getattr(sa, f"buf_output{s}")(b)
                torch.testing.assert_close(out[mode][f"p{s}"], expected, rtol=0, atol=1e-5)
        for s in [2, 3, 4, 5]:
            p = f"p{s}"
            torch.testing.assert_close(out["td+buf"][p], out["td"][p] + out["buf"][p])
            fused = getattr(sa, f"sa_fuse{s}")(torch.cat([out["td"][p], out["buf"][p]], dim=1))
            torch.testing.assert_close(out_sa[p], fused)
        # p6 is LastLevelMaxPool on the final p5
        assert torch.equal(out_sa["p6"], F.max_pool2d(out_sa["p5"], 1, stride=2))


# --- 3. every parameter gets a gradient -----------------------------------------------------

_GRAD_CASES = [dict(mode=m) for m in MODES] + [
    dict(mode=m, **lever)
    for m in ["sa", "td+buf"]
    for lever in [
        dict(share_laterals=True),
        dict(fuse_position="before"),
        dict(td_only_levels=["p2"]),
        dict(share_laterals=True, fuse_position="before", td_only_levels=["p2", "p3"]),
    ]
]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", _GRAD_CASES, ids=lambda kw: "-".join(map(str, kw.values())))
def test_every_parameter_gets_a_gradient(kwargs):
    neck = _neck(norm="GN", out_channels=32, **kwargs).train()
    torch.manual_seed(0)
    out = neck(torch.randn(1, 3, 37, 45))
    loss = sum((t * torch.randn_like(t)).sum() for t in out.values())
    loss.backward()
    params = dict(neck.named_parameters())
    for name, p in params.items():
        assert p.grad is not None, f"{name} gets no gradient"
        assert p.grad.abs().sum() > 0, f"{name} gets a zero gradient"


# --- efficiency levers ----------------------------------------------------------------------


def _neck_params(neck):
    return {k: v.numel() for k, v in neck.named_parameters() if not k.startswith("bottom_up.")}


def test_levers_remove_the_modules_they_name():
    faithful = _neck_params(_neck("sa"))
    shared = _neck_params(_neck("sa", share_laterals=True))
    before = _neck_params(_neck("sa", fuse_position="before"))
    p2_td = _neck_params(_neck("sa", td_only_levels=["p2"]))
    assert not any(k.startswith("buf_lateral") for k in shared)
    assert set(faithful) - set(shared) == {
        f"buf_lateral{s}.{w}" for s in range(2, 6) for w in ["weight", "bias"]
    }
    assert set(faithful) - set(before) == {
        f"buf_output{s}.{w}" for s in range(2, 6) for w in ["weight", "bias"]
    }
    assert set(faithful) - set(p2_td) == {
        f"{m}2.{w}" for m in ["buf_output", "sa_fuse"] for w in ["weight", "bias"]
    }
    assert sum(shared.values()) < sum(faithful.values())


def test_td_only_levels_output_the_td_pathway():
    x = torch.randn(1, 3, 64, 64)
    neck = _neck("sa", td_only_levels=["p2", "p3"])
    td = _neck("td", seed=5)
    _copy_by_name(neck, td)
    with torch.no_grad():
        a, b = neck(x), td(x)
    assert torch.equal(a["p2"], b["p2"]) and torch.equal(a["p3"], b["p3"])
    assert not torch.allclose(a["p4"], b["p4"])


def test_fuse_before_is_one_output_conv_on_the_fused_sums():
    x = torch.randn(1, 3, 64, 64)
    neck = _neck("td+buf", fuse_position="before", share_laterals=True)
    with torch.no_grad():
        out = neck(x)
        feats = [neck.bottom_up(x)[f] for f in IN_FEATURES]
        lat = [getattr(neck, f"fpn_lateral{s}")(f) for s, f in zip([2, 3, 4, 5], feats)]
        td = [lat[3]]
        for k in [2, 1, 0]:
            td.insert(0, lat[k] + F.interpolate(td[0], scale_factor=2.0, mode="nearest"))
        b = [lat[0] + F.interpolate(lat[1], scale_factor=2.0, mode="nearest")]
        for k, s in enumerate([3, 4, 5], start=1):
            b.append(lat[k] + getattr(neck, f"buf_down{s}")(b[-1]))
            if k < 3:
                b[-1] = b[-1] + F.interpolate(lat[k + 1], scale_factor=2.0, mode="nearest")
        for k, s in enumerate([2, 3, 4, 5]):
            expected = getattr(neck, f"fpn_output{s}")(td[k] + b[k])
            torch.testing.assert_close(out[f"p{s}"], expected, rtol=0, atol=1e-5)


_TWO_PATH_CASES = [
    dict(mode="sa"),
    dict(mode="td+buf", share_laterals=True),
    dict(mode="sa", share_laterals=True, fuse_position="before", td_only_levels=["p2"]),
    dict(mode="td+buf", fuse_position="before", td_only_levels=["p2", "p3"]),
]


@pytest.mark.parametrize("kwargs", _TWO_PATH_CASES, ids=lambda kw: "-".join(map(str, kw.values())))
def test_two_pathways_are_bit_exact_and_release_their_inputs(kwargs):
    """The neck runs its two pathways in a memory-bounded order: the outputs equal the plain
    formulas evaluated level by level exactly, and the bottom-up features it was given are
    released before the coarser levels are fused."""
    neck = _neck(**kwargs)
    mode, shared = kwargs["mode"], kwargs.get("share_laterals", False)
    before = kwargs.get("fuse_position") == "before"
    n_td_only = len(kwargs.get("td_only_levels", []))
    x = torch.randn(1, 3, 64, 96)
    up = lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")  # noqa: E731
    with torch.no_grad():
        feats = [neck.bottom_up(x)[f] for f in IN_FEATURES]
        lat = [getattr(neck, f"fpn_lateral{s}")(f) for s, f in zip([2, 3, 4, 5], feats)]
        bu_lat = (
            lat
            if shared
            else [getattr(neck, f"buf_lateral{s}")(f) for s, f in zip([2, 3, 4, 5], feats)]
        )
        td = [lat[3]]
        for k in [2, 1, 0]:
            td.insert(0, lat[k] + up(td[0]))
        bu = []
        for k, s in enumerate([2, 3, 4, 5]):
            b = bu_lat[k] if k == 0 else bu_lat[k] + getattr(neck, f"buf_down{s}")(bu[-1])
            bu.append(b + up(bu_lat[k + 1]) if k < 3 else b)
        expected = {}
        for k, s in enumerate([2, 3, 4, 5]):
            t, b = td[k], bu[k]
            if k < n_td_only:
                expected[f"p{s}"] = getattr(neck, f"fpn_output{s}")(t)
                continue
            if not before:
                t, b = getattr(neck, f"fpn_output{s}")(t), getattr(neck, f"buf_output{s}")(b)
            fused = getattr(neck, f"sa_fuse{s}")(torch.cat([t, b], 1)) if mode == "sa" else t + b
            expected[f"p{s}"] = getattr(neck, f"fpn_output{s}")(fused) if before else fused

        finest = {}
        neck.bottom_up.register_forward_hook(
            lambda m, i, out: finest.update(ref=weakref.ref(out["res2"]))
        )
        released = []
        coarse = getattr(neck, "sa_fuse5" if mode == "sa" else "fpn_output5")
        coarse.register_forward_pre_hook(lambda m, i: released.append(finest["ref"]() is None))
        out = neck(x)
    for p, e in expected.items():
        assert torch.equal(out[p], e), p
    assert released == [True], "the finest bottom-up features outlive their laterals"


# --- 2 (checkpoints) and 4 (configs) --------------------------------------------------------


def _tiny_cfg(backbone="build_resnet_fpn_backbone", depth=18, **safpn):
    """The suite's tiny yacs Mask R-CNN with another backbone builder, depth and SAFPN keys."""
    cfg = tiny_yacs_config("unused_train", "unused_test", "", sa_ejhead=False)
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    for k, v in safpn.items():
        cfg.MODEL.SAFPN[k.upper()] = v
    return cfg


def test_yacs_keys_and_registry():
    cfg = add_sa_ejhead_config(get_cfg())
    assert cfg.MODEL.SAFPN.MODE == "sa"
    assert cfg.MODEL.SAFPN.SQUARE_PAD == 0
    assert cfg.MODEL.SAFPN.SHARE_LATERALS is False
    assert cfg.MODEL.SAFPN.FUSE_POSITION == "after"
    assert list(cfg.MODEL.SAFPN.TD_ONLY_LEVELS) == []
    assert BACKBONE_REGISTRY.get("build_resnet_safpn_backbone") is build_resnet_safpn_backbone


@pytest.mark.slow
@pytest.mark.parametrize("depth", [18, 50, 101])
def test_yacs_builds_resnet_safpn(depth):
    cfg = _tiny_cfg(
        "build_resnet_safpn_backbone",
        depth=depth,
        mode="td+buf",
        share_laterals=True,
        fuse_position="before",
        td_only_levels=["p2"],
        square_pad=128,
    )
    cfg.MODEL.FPN.NORM = "GN"
    cfg.MODEL.FPN.FUSE_TYPE = "avg"
    neck = build_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(neck, SAFPN) and neck.mode == "td+buf"
    assert neck.padding_constraints == {"square_size": 128}
    names = {k.split(".")[0] for k, _ in neck.named_parameters()}
    assert "buf_lateral3" not in names and "buf_output3" not in names and "buf_down3" in names
    assert isinstance(neck.fpn_lateral2.norm, nn.GroupNorm)
    with torch.no_grad():
        out = neck(torch.randn(1, 3, 64, 96))
    sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert [tuple(t.shape) for t in out.values()] == [(1, 32, h, w) for h, w in sizes]


def _lazy_model(**backbone):
    cfg = LazyConfig.load(LAZY_MODEL)
    m = cfg.model
    m.backbone.bottom_up.stages.depth = 18
    del m.backbone.bottom_up.stages.stride_in_1x1
    m.backbone.out_channels = 32
    m.backbone.update(**backbone)
    m.proposal_generator.head.in_channels = 32
    m.proposal_generator.post_nms_topk = (64, 32)
    m.roi_heads.num_classes = 3
    m.roi_heads.batch_size_per_image = 32
    m.roi_heads.box_head.input_shape = ShapeSpec(channels=32, height=7, width=7)
    m.roi_heads.box_head.fc_dims = [64, 64]
    m.roi_heads.box_predictor.input_shape = ShapeSpec(channels=64)
    m.roi_heads.mask_head.input_shape = ShapeSpec(channels=32, width=14, height=14)
    m.roi_heads.mask_head.conv_dims = [32, 32]
    return cfg


def test_lazy_config_swaps_only_the_neck(tmp_path):
    cfg = LazyConfig.load(LAZY_MODEL)
    base = get_config("common/models/mask_rcnn_fpn.py").model
    assert cfg.model.backbone._target_ is SAFPN
    assert cfg.model.backbone.mode == "sa"
    assert cfg.model.backbone.bottom_up == base.backbone.bottom_up
    for key in ["proposal_generator", "roi_heads", "pixel_mean", "input_format"]:
        assert cfg.model[key] == base[key], key
    LazyConfig.save(cfg, str(tmp_path / "model.yaml"))  # no lambdas: it serializes
    assert LazyConfig.load(str(tmp_path / "model.yaml")).model.backbone.mode == "sa"


def _image_with_gt(h, w):
    torch.manual_seed(0)
    boxes = torch.tensor([[20.0, 30.0, 120.0, 150.0], [100.0, 10.0, 240.0, 190.0]])
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        m[y0:y1, x0:x1] = True
    gt = Instances((h, w))
    gt.gt_boxes, gt.gt_classes, gt.gt_masks = Boxes(boxes), torch.tensor([0, 2]), BitMasks(masks)
    image = torch.randint(0, 255, (3, h, w)).float()
    return {"image": image, "height": h, "width": w, "instances": gt}


@pytest.mark.slow
def test_mask_rcnn_with_safpn_at_odd_size_trains_and_infers():
    model = instantiate(_lazy_model().model)
    assert isinstance(model.backbone, SAFPN)
    inputs = [_image_with_gt(200, 249)]
    model.train()
    with EventStorage():
        losses = model(inputs)
    assert {"loss_rpn_cls", "loss_cls", "loss_box_reg", "loss_mask"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    neck_params = [(k, p) for k, p in model.backbone.named_parameters() if "bottom_up" not in k]
    assert all(p.grad is not None for _, p in neck_params)
    model.eval()
    with torch.no_grad():
        (result,) = model([{"image": inputs[0]["image"], "height": 200, "width": 249}])
    inst = result["instances"]
    assert inst.image_size == (200, 249)
    assert inst.pred_masks.shape[1:] == (200, 249)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_detectron2_checkpoint_fills_the_td_part(tmp_path):
    """A Detectron2 Mask R-CNN checkpoint loads into the SA-FPN model; the new part is new."""
    torch.manual_seed(0)
    d2 = build_model(_tiny_cfg())
    DetectionCheckpointer(d2, save_dir=str(tmp_path)).save("d2_mask_rcnn")
    ckpt = _state(d2)
    torch.manual_seed(1)
    ours = build_model(_tiny_cfg("build_resnet_safpn_backbone", mode="sa"))
    before = _state(ours)
    DetectionCheckpointer(ours).load(str(tmp_path / "d2_mask_rcnn.pth"))
    after = _state(ours)
    new = set(after) - set(ckpt)
    expected_new = {
        f"backbone.{m}{s}.{w}"
        for m, levels in [("buf_lateral", "2345"), ("buf_output", "2345"), ("sa_fuse", "2345")]
        for s in levels
        for w in ["weight", "bias"]
    } | {f"backbone.buf_down{s}.{w}" for s in "345" for w in ["weight", "bias"]}
    assert new == expected_new
    assert set(ckpt) - set(after) == set()  # nothing in the checkpoint is left unused
    for k in ckpt:
        assert torch.equal(after[k], ckpt[k]), f"{k} not loaded"
    for k in new:
        assert torch.equal(after[k], before[k]), f"{k} changed by the load"
    assert any("fpn_lateral2" in k for k in ckpt)

    # td mode: the same checkpoint fills the whole model, names unchanged (strict)
    td = build_model(_tiny_cfg("build_resnet_safpn_backbone", mode="td"))
    td.load_state_dict(d2.state_dict(), strict=True)


def test_suffix_matching_loader_does_not_confuse_td_and_buf_names(tmp_path):
    """Detectron2's heuristic loader (suffix matching) puts FPN weights in the TD modules only."""
    torch.manual_seed(0)
    fpn = build_backbone(_tiny_cfg())
    # a bare backbone checkpoint: keys without the "backbone." prefix
    torch.save({"model": fpn.state_dict()}, str(tmp_path / "fpn_backbone.pth"))
    torch.manual_seed(1)
    ours = build_model(_tiny_cfg("build_resnet_safpn_backbone", mode="sa"))
    before = _state(ours)
    DetectionCheckpointer(ours).load(
        str(tmp_path / "fpn_backbone.pth") + "?matching_heuristics=True"
    )
    after = _state(ours)
    for k, v in fpn.state_dict().items():
        assert torch.equal(after["backbone." + k], v), k
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and changed <= {"backbone." + k for k in fpn.state_dict()}
    assert not any(k.startswith(("backbone.buf_", "backbone.sa_fuse")) for k in changed)


def test_wrong_top_block_type_fails_at_construction():
    with pytest.raises(TypeError, match=r"top_block must be an nn.Module .* or None, got str"):
        SAFPN(tiny_resnet(), IN_FEATURES, 8, top_block="p6")
