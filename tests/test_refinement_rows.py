"""Boundary Refinement options that keep Table 5's rows to one variable, and the solver's
learning-rate factor for the Enriched Feature's fc1."""

import pytest
import torch
from torch import nn

from detectron2.solver.build import get_default_optimizer_params

from sa_ejhead.modeling import BoundaryRefinement
from sa_ejhead.modeling import ParamLRFactor, enriched_fc1_lr_factor

C = 8


def test_linear_stacked_convs_differ_from_the_residual_block_by_the_shortcut_only():
    torch.manual_seed(0)
    x = torch.randn(3, C, 14, 14)
    residual = BoundaryRefinement(C, mode="residual")
    stacked = BoundaryRefinement(C, mode="conv2", last_relu=False)
    stacked.load_state_dict(residual.state_dict())  # same layers, same names
    assert torch.allclose(residual(x), x + stacked(x), atol=1e-6)
    assert (stacked(x) < 0).any()  # the last conv is linear, as the residual branch
    # the default keeps each mode's own ending (the v1 rows): a ReLU after the stacked convs
    assert (BoundaryRefinement(C, mode="conv2")(x) >= 0).all()
    relu_residual = BoundaryRefinement(C, mode="residual", last_relu=True)
    relu_residual.load_state_dict(residual.state_dict())
    assert (relu_residual(x) - x >= 0).all()
    with pytest.raises(TypeError, match="last_relu must be None or a bool"):
        BoundaryRefinement(C, mode="conv1", last_relu="no")


@pytest.mark.parametrize("mode, bottleneck", [("residual", 0), ("residual", 2), ("conv3", 0)])
def test_zero_init_last_makes_the_branch_start_at_zero(mode, bottleneck):
    x = torch.randn(2, C, 7, 7)
    block = BoundaryRefinement(
        C, mode=mode, bottleneck_channels=bottleneck, zero_init_last=True, last_relu=False
    )
    out = block(x)
    assert torch.equal(out, x) if mode == "residual" else torch.equal(out, torch.zeros_like(x))
    out.sum().backward()  # the zero conv still learns
    last = getattr(block, block._layer_names[-1])
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0


class _Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.box_head = nn.Module()
        self.box_head.fc1 = nn.Linear(4, 3)
        self.box_head.fc2 = nn.Linear(3, 3)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.roi_heads = _Heads()
        self.norm = nn.BatchNorm1d(3)


def test_enriched_fc1_factor_reaches_the_optimizer():
    factor = enriched_fc1_lr_factor(14, 7)
    assert factor.factor == 0.25 and enriched_fc1_lr_factor(7, 7).factor == 1.0
    lrs = {}
    model = _Model()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = get_default_optimizer_params(
        model, base_lr=0.01, weight_decay_norm=0.0, lr_factor_func=factor
    )
    for g in groups:  # groups with equal hyper-parameters are merged
        lrs.update({names[id(p)]: g["lr"] for p in g["params"]})
    assert lrs["roi_heads.box_head.fc1.weight"] == pytest.approx(0.0025)
    assert lrs["roi_heads.box_head.fc1.bias"] == pytest.approx(0.0025)
    assert lrs["roi_heads.box_head.fc2.weight"] == pytest.approx(0.01)
    assert lrs["norm.weight"] == pytest.approx(0.01)
    # DistributedDataParallel's "module." prefix; the heads of a cascade
    assert factor("module.roi_heads.box_head.fc1.weight") == 0.25
    cascade = enriched_fc1_lr_factor(14, 7, num_stages=3)
    assert cascade("roi_heads.box_head.2.fc1.weight") == 0.25
    assert cascade("roi_heads.box_head.fc1.weight") == 1.0
    with pytest.raises(ValueError, match="factor must be > 0"):
        ParamLRFactor("roi_heads.", 0)
    with pytest.raises(ValueError, match="non-empty strings"):
        ParamLRFactor([], 1.0)


def test_factor_repr_is_the_same_in_every_process():
    """Configs holding it hash the same everywhere: its repr names its values, not an address
    (as a partial's or a lambda's would)."""
    factor = enriched_fc1_lr_factor(14, 7)
    assert "0x" not in repr(factor) and "0.25" in repr(factor)
    assert repr(factor) == repr(enriched_fc1_lr_factor(14, 7)) != repr(enriched_fc1_lr_factor(7, 7))
    assert factor == enriched_fc1_lr_factor(14, 7)


def _flattens_14x14(roi):
    return roi.box_pooler.output_size == 14 and roi.get("box_refinement_downsample", 1) == 1


@pytest.mark.slow
def test_coco_configs_slow_the_enriched_fc1_and_only_it():
    """Every model-zoo config that flattens 14x14 RoIs into fc1 gives it (7/14)^2 of the lr;
    no other config scales any learning rate."""
    import glob
    import os

    from detectron2.config import LazyConfig

    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
    files = sorted(glob.glob(os.path.join(root, "COCO-InstanceSegmentation", "*.py")))
    seen_enriched = 0
    for path in files:
        cfg = LazyConfig.load(path)
        roi = cfg.model.roi_heads
        factor = cfg.optimizer.params.get("lr_factor_func")
        if _flattens_14x14(roi):
            seen_enriched += 1
            fc1 = (
                "roi_heads.box_head.0.fc1.weight"
                if "box_heads" in roi
                else "roi_heads.box_head.fc1.weight"
            )
            assert factor is not None and factor(fc1) == 0.25, path
            assert factor("roi_heads.box_head.fc2.weight") == 1.0
        else:
            assert factor is None, path
    assert seen_enriched >= 5


def test_yacs_trainer_slows_the_enriched_fc1():
    """The yacs EJ-Head configs give fc1 (7/14)^2 of SOLVER.BASE_LR through Trainer's optimizer;
    the baseline's optimizer is Detectron2's."""
    from detectron2.modeling import build_model

    from sa_ejhead import model_zoo
    from sa_ejhead.engine import Trainer

    for name, expected in [
        ("yacs/mask_rcnn_R_50_FPN_EJHead_1x.yaml", 0.25),
        ("yacs/mask_rcnn_R_50_FPN_1x.yaml", 1.0),
    ]:
        cfg = model_zoo.get_config(name)
        cfg.defrost()
        cfg.MODEL.DEVICE = "meta"  # parameters without memory or init
        assert cfg.SOLVER.ENRICHED_FC1_LR_FACTOR == expected
        with torch.device("meta"):
            model = build_model(cfg)
        names = {id(p): n for n, p in model.named_parameters()}
        optimizer = Trainer.build_optimizer(cfg, model)
        lrs = {}
        for g in optimizer.param_groups:
            lrs.update({names[id(p)]: g["lr"] for p in g["params"]})
        base = cfg.SOLVER.BASE_LR
        assert lrs["roi_heads.box_head.fc1.weight"] == pytest.approx(base * expected)
        assert lrs["roi_heads.box_head.fc2.weight"] == pytest.approx(base)
