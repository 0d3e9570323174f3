"""Every config of the paper's tables (and the efficient model) has the paper's schedule and data,
saves as YAML, and builds the architecture its row asks for; its optimizer takes the model.

Each LazyConfig (``sa_ejhead.model_zoo.LAZY_CONFIGS`` and ``OTHER_CONFIGS``) and yacs config
(``YACS_CONFIGS``) is its own test id. The models are built at full size on the ``meta`` device
(names and shapes, no memory, no init); what they compute, one training step and an inference of
each config's model made tiny, is tests/test_equality.py's.
"""

import os

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model

from sa_ejhead import model_zoo
from sa_ejhead.data import register_sa_shapes

_D = "COCO-InstanceSegmentation/"
# config -> (ResNet depth, neck: "fpn" or SAFPN mode, ROI heads class, box RoI size,
#            refinement mode or None, interleave)
_STD = ("StandardROIHeads", 7, None, False)
_EJ = ("EJROIHeads", 14, "residual", True)
EXPECTED = {
    # Table 2
    "mask_rcnn_R_50_FPN_1x.py": (50, "fpn") + _STD,
    "mask_rcnn_R_50_SAFPN_1x.py": (50, "sa") + _STD,
    "mask_rcnn_R_50_FPN_EJHead_1x.py": (50, "fpn") + _EJ,
    "mask_rcnn_R_50_SAFPN_EJHead_1x.py": (50, "sa") + _EJ,
    "mask_rcnn_R_101_FPN_1x.py": (101, "fpn") + _STD,
    "mask_rcnn_R_101_SAFPN_EJHead_1x.py": (101, "sa") + _EJ,
    "cascade_mask_rcnn_R_50_FPN_1x.py": (50, "fpn", "CascadeROIHeads", 7, None, False),
    "cascade_mask_rcnn_R_50_SAFPN_EJHead_1x.py": (50, "sa", "EJCascadeROIHeads") + _EJ[1:],
    # Table 3
    "mask_rcnn_R_50_BUFPN_1x.py": (50, "bu") + _STD,
    "mask_rcnn_R_50_BUFFPN_1x.py": (50, "buf") + _STD,
    "mask_rcnn_R_50_TDaddBUF_1x.py": (50, "td+buf") + _STD,
    # Table 4
    "mask_rcnn_R_50_FPN_EJ_interleave_1x.py": (50, "fpn", "EJROIHeads", 7, None, True),
    "mask_rcnn_R_50_FPN_EJ_enriched_1x.py": (50, "fpn", "EJROIHeads", 14, None, False),
    "mask_rcnn_R_50_FPN_EJ_refine_1x.py": (50, "fpn", "EJROIHeads", 7, "residual", False),
    "mask_rcnn_R_50_FPN_EJ_interleave_enriched_1x.py": (50, "fpn", "EJROIHeads", 14, None, True),
    # Table 5
    "mask_rcnn_R_50_FPN_EJ_BR_conv1_1x.py": (50, "fpn", "EJROIHeads", 7, "conv1", False),
    "mask_rcnn_R_50_FPN_EJ_BR_conv2_1x.py": (50, "fpn", "EJROIHeads", 7, "conv2", False),
    "mask_rcnn_R_50_FPN_EJ_BR_conv3_1x.py": (50, "fpn", "EJROIHeads", 7, "conv3", False),
    # Table 1
    "mask_rcnn_R_101_SAFPN_EJHead_20ep.py": (101, "sa") + _EJ,
}
# the configs that are no paper row: 7x7 box RoIs at sampling ratio 2 (= 14x14 at 1, averaged)
OTHER_EXPECTED = {
    "mask_rcnn_R_50_SAFPN_EJHead_efficient_1x.py": (50, "sa", "EJROIHeads", 7, "residual", True),
}
# ResNet depth -> number of blocks in res4
_RES4_BLOCKS = {50: 6, 101: 23}
# COCO train2017 after Detectron2's filtering, 16 images per iteration
_ITERS_PER_EPOCH = 117266 / 16


def _check_architecture(model, name):
    """Check that the built model is the one the paper row asks for."""
    depth, neck, heads, box_size, refinement, interleave = {**EXPECTED, **OTHER_EXPECTED}[name]
    assert len(model.backbone.bottom_up.res4) == _RES4_BLOCKS[depth]
    if neck == "fpn":
        assert type(model.backbone).__name__ == "FPN"
    else:
        assert type(model.backbone).__name__ == "SAFPN"
        assert model.backbone.mode == neck
    roi_heads = model.roi_heads
    assert type(roi_heads).__name__ == heads
    assert roi_heads.box_pooler.output_size == (box_size, box_size)
    assert roi_heads.mask_pooler.output_size == (14, 14)
    box_heads = roi_heads.box_head if "Cascade" in heads else [roi_heads.box_head]
    if "Cascade" in heads:
        assert roi_heads.num_cascade_stages == len(box_heads) == 3
    for box_head in box_heads:
        # the faithful "Enriched Feature": the whole RoI feature flattened into fc1
        assert box_head.fc1.in_features == 256 * box_size * box_size
    if heads.startswith("EJ"):
        assert (roi_heads.refinement.mode if roi_heads.refinement else None) == refinement
        assert roi_heads.refinement_scope == "shared"
        # box and mask RoIs refined by the one refinement
        assert roi_heads.box_pooler.refinement is roi_heads.mask_pooler.refinement
        assert roi_heads.box_pooler.refinement is roi_heads.refinement
        assert roi_heads.interleave == interleave
    else:
        assert refinement is None and not interleave


def test_every_experiment_config_is_listed():
    """Every .py under configs/COCO-InstanceSegmentation is listed in model_zoo (a paper row or
    one of OTHER_CONFIGS), every paper row has a file and an EXPECTED architecture, and every
    YAML under configs/yacs (but the base) is a paper row's."""
    root = os.path.join(model_zoo.get_config_root(), "COCO-InstanceSegmentation")
    on_disk = {_D + f for f in os.listdir(root) if f.endswith(".py")}
    assert on_disk == set(model_zoo.LAZY_CONFIGS) | set(model_zoo.OTHER_CONFIGS)
    assert set(EXPECTED) == {c[len(_D) :] for c in model_zoo.LAZY_CONFIGS}
    assert set(OTHER_EXPECTED) == {c[len(_D) :] for c in model_zoo.OTHER_CONFIGS}
    root = os.path.join(model_zoo.get_config_root(), "yacs")
    on_disk = {"yacs/" + f for f in os.listdir(root) if not f.startswith("Base-")}
    assert on_disk == set(model_zoo.YACS_CONFIGS)


def test_readme_table_maps_every_row():
    """docs/configs.md has each paper row with links to its configs and the paper's AP."""
    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "configs.md"
    )
    with open(path) as f:
        text = f.read()
    for r in model_zoo.PAPER_ROWS:
        cfg = f"[{os.path.basename(r.config)}](../configs/{r.config})"
        if r.yacs_config:
            cfg += f"; [{os.path.basename(r.yacs_config)}](../configs/{r.yacs_config})"
        # the "our AP" column is filled in by hand when a row is trained
        row = f"| {r.table}: {r.row} | {cfg} | {r.box_ap:.1f} | {r.mask_ap:.1f} |"
        assert row in text, row


def test_get_config_errors():
    """An unknown config path names itself in the error."""
    with pytest.raises(RuntimeError, match="not one of sa-ejhead's configs"):
        model_zoo.get_config("COCO-InstanceSegmentation/no_such_config.py")


def _check_schedule_and_data(cfg, config_path):
    """The paper's schedule (12 or 20 epochs), data (800/1333, batch 16) and ImageNet init."""
    epochs = 20 if config_path.endswith("_20ep.py") else 12
    steps = (16, 19) if epochs == 20 else (9, 11)
    assert round(cfg.train.max_iter / _ITERS_PER_EPOCH, 3) == epochs
    milestones = cfg.lr_multiplier.scheduler.milestones
    assert milestones[-1] == cfg.train.max_iter
    assert [round(m / _ITERS_PER_EPOCH) for m in milestones[:2]] == list(steps)
    sched = instantiate(cfg.lr_multiplier)
    for it, value in [(1000, 1.0), (milestones[0] - 1, 1.0), (milestones[0], 0.1)]:
        assert sched(it / cfg.train.max_iter) == pytest.approx(value)
    assert sched(milestones[1] / cfg.train.max_iter) == pytest.approx(0.01)
    assert cfg.optimizer.lr == 0.02
    assert cfg.dataloader.train.total_batch_size == 16
    resize = cfg.dataloader.train.mapper.augmentations[0]
    assert (resize.short_edge_length, resize.max_size) == (800, 1333)
    assert cfg.dataloader.test.mapper.augmentations[0].short_edge_length == 800
    depth = 101 if "_R_101_" in config_path else 50
    assert cfg.train.init_checkpoint == f"detectron2://ImageNetPretrained/MSRA/R-{depth}.pkl"
    assert cfg.model.backbone.bottom_up.freeze_at == 2


def test_paper_data_pipeline(tmp_path):
    """The configs' loaders (configs/common/coco_sa.py) resize to a shorter side of 800 with the
    longer side at most 1333, for training and testing; run on a tiny synthetic COCO-format set."""
    prefix = f"test_configs_shapes_{os.getpid()}"
    register_sa_shapes(str(tmp_path), prefix=prefix, num_train=3, num_val=1, height=96, width=200)
    cfg = model_zoo.get_config(_D + "mask_rcnn_R_50_SAFPN_EJHead_1x.py")
    assert cfg.dataloader.train.total_batch_size == 16
    cfg.dataloader.train.dataset.names = prefix + "_train"
    cfg.dataloader.train.total_batch_size = 2
    cfg.dataloader.train.num_workers = 0
    # SA-Shapes has RLE masks too (COCO's non-crowd masks are polygons, Detectron2's default)
    cfg.dataloader.train.mapper.instance_mask_format = "bitmask"
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert len(batch) == 2
    for d in batch:
        # 96 x 200 -> 800 x 1667 would exceed 1333: the longer side is capped
        assert tuple(d["image"].shape) == (3, 640, 1333)
        assert d["instances"].has("gt_masks")
    cfg.dataloader.test.dataset.names = prefix + "_val"
    cfg.dataloader.test.num_workers = 0
    (d,) = next(iter(instantiate(cfg.dataloader.test)))
    assert tuple(d["image"].shape) == (3, 640, 1333) and (d["height"], d["width"]) == (96, 200)


# configs whose model is exactly another config's (only the schedule differs): checked equal,
# not trained twice
_SAME_MODEL = {"mask_rcnn_R_101_SAFPN_EJHead_20ep.py": "mask_rcnn_R_101_SAFPN_EJHead_1x.py"}


@pytest.mark.slow
@pytest.mark.parametrize("config_path", model_zoo.LAZY_CONFIGS + model_zoo.OTHER_CONFIGS)
def test_lazy_config(config_path, tmp_path):
    """Schedule and data as the paper; saves as YAML; builds the row's architecture, which the
    config's optimizer takes."""
    cfg = model_zoo.get_config(config_path)
    _check_schedule_and_data(cfg, config_path)
    LazyConfig.save(cfg, str(tmp_path / "cfg.yaml"))
    assert not os.path.exists(tmp_path / "cfg.yaml.pkl")  # written as a .pkl if not serialisable
    assert LazyConfig.load(str(tmp_path / "cfg.yaml")).train.max_iter == cfg.train.max_iter

    name = os.path.basename(config_path)
    if name in _SAME_MODEL:
        assert cfg.model == model_zoo.get_config(_D + _SAME_MODEL[name]).model
        return
    with torch.device("meta"):
        model = instantiate(cfg.model)
    _check_architecture(model, name)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(params) == len([p for p in model.parameters() if p.requires_grad])


@pytest.mark.slow
@pytest.mark.parametrize("config_path", model_zoo.YACS_CONFIGS)
def test_yacs_config_matches_lazy_config(config_path):
    """The yacs YAML builds the same model (names and shapes) and schedule as its LazyConfig."""
    (row,) = {r for r in model_zoo.PAPER_ROWS if r.yacs_config == config_path}
    cfg = model_zoo.get_config(config_path)
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):  # names and shapes only: no memory, no init
        model = build_model(cfg)
    _check_architecture(model, os.path.basename(row.config))

    lazy = model_zoo.get_config(row.config)
    assert model_zoo.get_config(config_path).MODEL.WEIGHTS == lazy.train.init_checkpoint
    with torch.device("meta"):
        lazy_model = instantiate(lazy.model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in lazy_model.state_dict().items()}
    modules = {n: type(m).__name__ for n, m in model.named_modules()}
    assert modules == {n: type(m).__name__ for n, m in lazy_model.named_modules()}
    assert cfg.SOLVER.MAX_ITER == lazy.train.max_iter
    assert list(cfg.SOLVER.STEPS) == list(lazy.lr_multiplier.scheduler.milestones[:2])
    assert cfg.SOLVER.BASE_LR == lazy.optimizer.lr
    assert cfg.SOLVER.IMS_PER_BATCH == lazy.dataloader.train.total_batch_size
    assert (cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN) == ((800,), 1333)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
