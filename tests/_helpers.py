"""Tiny datasets and configs for fast CPU tests of the engine and the tools.

The tests (ours and the tools' smoke tests) build a few 64-pixel COCO images and a narrow Mask
R-CNN (ResNet-18, 32-channel pyramid, 64-d box fc) that trains at well under a second per
iteration on a CPU core; :func:`run_tool_script` runs a tool in the test's process and
:class:`listen` collects a logger's records. Import it as ``_helpers`` (pytest puts ``tests/`` on
``sys.path``).
"""

import json
import logging
import os
import runpy
import sys

import cv2
import numpy as np

__all__ = [
    "listen",
    "run_tool_script",
    "write_tiny_coco",
    "tiny_lazy_config",
    "write_tiny_lazy_config_file",
    "tiny_yacs_config",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool_script(script, argv, monkeypatch):
    """Run ``tools/<script>`` in this process, as ``python tools/<script> argv...``.

    Returns:
        int: the exit status.
    """
    monkeypatch.setattr(sys, "argv", [script] + list(argv))
    try:
        runpy.run_path(os.path.join(REPO, "tools", script), run_name="__main__")
    except SystemExit as e:
        return e.code or 0
    return 0


_CATEGORIES = [{"id": 1, "name": "box"}, {"id": 2, "name": "blob"}]


class listen:
    """Collect each record of the logger ``name`` (default ``sa_ejhead``: the package's and the
    tools' loggers) once in ``caplog``, within a ``with`` block.

    The tools set up the ``sa_ejhead`` logger without propagation to the root logger (where
    ``caplog`` listens); whether that happened depends on the tests that ran before.
    """

    def __init__(self, caplog, name="sa_ejhead"):
        self.caplog, self.logger = caplog, logging.getLogger(name)

    def __enter__(self):
        self.caplog.clear()
        self.propagate, self.logger.propagate = self.logger.propagate, False
        self.logger.addHandler(self.caplog.handler)
        return self.caplog

    def __exit__(self, *exc):
        self.logger.removeHandler(self.caplog.handler)
        self.logger.propagate = self.propagate


def write_tiny_coco(root, num_images=4, size=64, seed=0, max_objects=3):
    """Write a tiny COCO instances dataset (PNG images + polygons) under ``root``.

    Each image holds 1..``max_objects`` filled rectangles ("box") and ellipses ("blob") on a
    noisy background; masks are polygons. Deterministic for a given ``seed``.

    Args:
        root (str): folder to write into (created).
        num_images (int): number of images.
        size (int): image side in pixels (images are ``size x size``).
        seed (int): seed of the generator.
        max_objects (int): most objects per image.

    Returns:
        tuple[str, str]: ``(json_file, image_root)``.
    """
    rng = np.random.RandomState(seed)
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img = rng.randint(0, 60, size=(size, size, 3)).astype(np.uint8)
        for _ in range(rng.randint(1, max_objects + 1)):
            cat = int(rng.randint(1, 3))
            w, h = rng.randint(size // 6, size // 2, size=2)
            x0, y0 = rng.randint(0, size - w), rng.randint(0, size - h)
            color = tuple(int(c) for c in rng.randint(100, 256, size=3))
            if cat == 1:
                poly = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]])
            else:
                t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                cx, cy = x0 + w / 2.0, y0 + h / 2.0
                poly = np.stack([cx + w / 2.0 * np.cos(t), cy + h / 2.0 * np.sin(t)], axis=1)
            cv2.fillPoly(img, [np.round(poly).astype(np.int32)], color)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "segmentation": [poly.astype(float).ravel().tolist()],
                    "bbox": [float(x0), float(y0), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
        file_name = f"{i:04d}.png"
        cv2.imwrite(os.path.join(image_root, file_name), img)
        images.append({"id": i + 1, "file_name": file_name, "width": size, "height": size})
    json_file = os.path.join(root, "annotations.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": _CATEGORIES}, f)
    return json_file, image_root


def _shrink_model(model, channels, num_classes):
    """Make a LazyConfig Mask R-CNN tiny, in place (fields that exist only)."""
    from detectron2.layers import ShapeSpec

    bottom_up = model.backbone.bottom_up
    bottom_up.stages.depth = 18
    bottom_up.stages.pop("stride_in_1x1", None)
    # From scratch: GroupNorm keeps the activations bounded (FrozenBN of a random init does not).
    bottom_up.stem.norm = "GN"
    bottom_up.stages.norm = "GN"
    model.backbone.out_channels = channels
    rpn = model.proposal_generator
    rpn.head.in_channels = channels
    rpn.batch_size_per_image = 64
    rpn.pre_nms_topk = (128, 64)
    rpn.post_nms_topk = (64, 32)
    heads = model.roi_heads
    heads.num_classes = num_classes
    heads.batch_size_per_image = 32
    box_res = heads.box_pooler.output_size
    heads.box_head.input_shape = ShapeSpec(channels=channels, height=box_res, width=box_res)
    heads.box_head.fc_dims = [64, 64]
    heads.box_predictor.input_shape = ShapeSpec(channels=64)
    mask_res = heads.mask_pooler.output_size
    heads.mask_head.input_shape = ShapeSpec(channels=channels, height=mask_res, width=mask_res)
    heads.mask_head.conv_dims = [channels, channels]
    for key in ("refinement", "box_refinement", "boundary_refinement"):
        node = heads.get(key, None)
        if node is not None and "channels" in node:
            node.channels = channels
    return model


def tiny_lazy_config(
    train_dataset,
    test_dataset,
    output_dir,
    *,
    model_config="common/models/mask_rcnn_fpn.py",
    max_iter=4,
    checkpoint_period=2,
    batch_size=2,
    image_size=64,
    num_classes=2,
    channels=32,
    seed=0,
    evaluate=True,
):
    """A complete, tiny LazyConfig (model, dataloader, optimizer, lr_multiplier, train) on CPU.

    Args:
        train_dataset (str): registered training dataset name.
        test_dataset (str): registered test dataset name.
        output_dir (str): ``train.output_dir``.
        model_config (str): a Detectron2 model-zoo path (``common/models/...``) or the path of a
            ``.py`` file defining ``model`` (e.g. one of ``configs/common/models``).
        max_iter (int): ``train.max_iter``.
        checkpoint_period (int): ``train.checkpointer.period``.
        batch_size (int): total batch size.
        image_size (int): shorter side of the resized images.
        num_classes (int): number of classes.
        channels (int): pyramid channels.
        seed (int): ``train.seed``.
        evaluate (bool): include a COCO evaluator.

    Returns:
        omegaconf.DictConfig: the config.
    """
    import detectron2.data.transforms as T
    from detectron2 import model_zoo
    from detectron2.config import LazyCall as L
    from detectron2.config import LazyConfig
    from detectron2.data import (
        DatasetMapper,
        build_detection_test_loader,
        build_detection_train_loader,
        get_detection_dataset_dicts,
    )
    from detectron2.solver import WarmupParamScheduler
    from fvcore.common.param_scheduler import MultiStepParamScheduler
    from omegaconf import OmegaConf

    from sa_ejhead.evaluation import COCOEvaluator

    if os.path.isfile(model_config):
        model = LazyConfig.load(model_config).model
    else:
        model = model_zoo.get_config(model_config).model
    _shrink_model(model, channels, num_classes)

    dataloader = OmegaConf.create()
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=train_dataset),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(
                    short_edge_length=(image_size, image_size + 16),
                    sample_style="choice",
                    max_size=image_size * 2,
                ),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format="BGR",
            use_instance_mask=True,
        ),
        total_batch_size=batch_size,
        num_workers=0,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=test_dataset, filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=128)],
            image_format="BGR",
        ),
        num_workers=0,
    )
    if evaluate:
        dataloader.evaluator = L(COCOEvaluator)(dataset_name=test_dataset)

    optimizer = model_zoo.get_config("common/optim.py").SGD
    optimizer.lr = 0.01
    lr_multiplier = L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1], milestones=[max(1, max_iter * 3 // 4)], num_updates=max_iter
        ),
        warmup_length=0.25,
        warmup_factor=0.1,
    )
    train = dict(
        output_dir=output_dir,
        init_checkpoint="",
        max_iter=max_iter,
        amp=dict(enabled=False),
        ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
        checkpointer=dict(period=checkpoint_period, max_to_keep=100),
        eval_period=0,
        log_period=20,
        device="cpu",
        seed=seed,
    )
    return OmegaConf.create(
        dict(
            model=model,
            dataloader=dataloader,
            optimizer=optimizer,
            lr_multiplier=lr_multiplier,
            train=train,
        ),
        flags={"allow_objects": True},
    )


def write_tiny_lazy_config_file(path, **kwargs):
    """Write a LazyConfig ``.py`` file that builds :func:`tiny_lazy_config` (for the tools).

    Args:
        path (str): the ``.py`` file to write.
        kwargs: arguments of :func:`tiny_lazy_config`.

    Returns:
        str: ``path``.
    """
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    here = os.path.dirname(os.path.abspath(__file__))
    with open(path, "w") as f:
        f.write(
            "import sys as _sys\n\n"
            f"if {here!r} not in _sys.path:\n"
            f"    _sys.path.insert(0, {here!r})  # a tool's own interpreter finds _helpers too\n"
            "from _helpers import tiny_lazy_config  # noqa: E402\n\n"
            f"_cfg = tiny_lazy_config({args})\n"
            "model = _cfg.model\n"
            "dataloader = _cfg.dataloader\n"
            "optimizer = _cfg.optimizer\n"
            "lr_multiplier = _cfg.lr_multiplier\n"
            "train = _cfg.train\n"
        )
    return path


def tiny_yacs_config(train_dataset, test_dataset, output_dir, *, max_iter=4, sa_ejhead=True):
    """A tiny yacs config (``get_cfg`` + :func:`add_sa_ejhead_config`) for ``DefaultTrainer``.

    Args:
        train_dataset (str): registered training dataset name.
        test_dataset (str): registered test dataset name.
        output_dir (str): ``OUTPUT_DIR``.
        max_iter (int): ``SOLVER.MAX_ITER``.
        sa_ejhead (bool): SA-FPN + EJ-Head (True) or Detectron2's Mask R-CNN FPN.

    Returns:
        CfgNode: the config.
    """
    from detectron2.config import get_cfg

    from sa_ejhead.config import add_sa_ejhead_config

    cfg = add_sa_ejhead_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = (
        "build_resnet_safpn_backbone" if sa_ejhead else "build_resnet_fpn_backbone"
    )
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "GN"  # from scratch (FrozenBN of a random init diverges)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 128
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 32
    cfg.MODEL.ROI_HEADS.NAME = "EJROIHeads" if sa_ejhead else "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14 if sa_ejhead else 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    cfg.DATASETS.TRAIN = (train_dataset,)
    cfg.DATASETS.TEST = (test_dataset,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (64, 80)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = (max_iter * 3 // 4,) if max_iter >= 2 else ()
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.TEST.EVAL_PERIOD = 0
    cfg.SEED = 0
    cfg.OUTPUT_DIR = output_dir
    return cfg


RES_FEATURES = ["res2", "res3", "res4", "res5"]


def tiny_resnet(width=8, seed=0):
    """A ResNet-18-like bottom-up (``RES_FEATURES``), one BasicBlock per stage, ``width``
    channels at res2, initialised from torch seed ``seed``."""
    import torch
    from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

    torch.manual_seed(seed)
    stages, c_in = [], width
    for i, c_out in enumerate([width, 2 * width, 4 * width, 8 * width]):
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                1,
                stride_per_block=[2 if i else 1],
                in_channels=c_in,
                out_channels=c_out,
            )
        )
        c_in = c_out
    return ResNet(BasicStem(3, width), stages, out_features=RES_FEATURES)


def onnx_nodes(graph):
    """Every node of an ONNX graph, those of the subgraphs (If / Loop bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for subgraph in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
                yield from onnx_nodes(subgraph)


class Crash(Exception):
    """A simulated crash (:func:`crash_at`)."""


def crash_at(iteration, error=Crash, stage="after_step"):
    """A training hook that raises ``error`` (an exception class) in iteration ``iteration``:
    ``stage="after_step"`` once it has finished and the hooks before it (the checkpointer) have
    run, ``"before_step"`` before it starts."""
    from detectron2.engine import HookBase

    def maybe_raise(self):
        if self.trainer.iter == iteration:
            raise error(f"simulated crash in iteration {iteration} ({stage})")

    return type("CrashAt", (HookBase,), {stage: maybe_raise})()
