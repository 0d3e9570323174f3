"""Record what the shipped configs' models compute, for tests/test_equality.py.

    python tests/make_equality_reference.py   # writes tests/data/equality_reference.pt

For every shipped config (``configs/COCO-InstanceSegmentation/*.py``, ``configs/demo/*.py`` and
``configs/yacs/*.yaml`` but the base) the model is built tiny (:func:`tiny_model`) from a fixed
seed and run on a fixed synthetic batch (:func:`synthetic_batch`): one training forward (its
losses, and the sum and norm of every parameter's gradient after the backward of their sum),
then an inference (boxes, scores, classes and the 28x28 mask probabilities). Configs whose tiny
model is the same (e.g. R-50 and R-101 once shrunk to ResNet-18) are computed once. The model
zoo's trained SA-Shapes model is recorded too, on image 0 of ``sa_shapes_val``.

Re-run it only when a change is meant to move the numbers; a refactoring must leave them as
they are (tests/test_equality.py).
"""

import glob
import json
import os
import sys
import time

import numpy as np
import torch

from detectron2.config import CfgNode, instantiate
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
REFERENCE = os.path.join(HERE, "data", "equality_reference.pt")
ZOO_CONFIG = "demo/sa_shapes.py"
NUM_CLASSES = 3
TOPK = 5  # detections per image kept at inference (score threshold 0)

if HERE not in sys.path:
    sys.path.insert(0, HERE)


def shipped_configs():
    """The shipped configs, relative to ``configs/``, sorted."""
    root = os.path.join(REPO, "configs")
    paths = glob.glob(os.path.join(root, "COCO-InstanceSegmentation", "*.py"))
    paths += glob.glob(os.path.join(root, "demo", "*.py"))
    paths += [p for p in glob.glob(os.path.join(root, "yacs", "*.yaml")) if "Base-" not in p]
    return sorted(os.path.relpath(p, root).replace(os.sep, "/") for p in paths)


def _tiny_lazy(model):
    """A LazyConfig model made tiny: ``_helpers._shrink_model`` (32 channels) with a half-width
    ResNet-18, or for the demo configs (already a half-width ResNet-18) the same head sizes on
    their own 64-channel features."""
    from detectron2.config import LazyCall as L
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import ResNet
    from detectron2.modeling.backbone.resnet import BasicBlock

    from _helpers import _shrink_model

    heads = model.roi_heads
    bottom_up = model.backbone.bottom_up
    if "depth" in bottom_up.stages:
        cascade = "box_heads" in heads
        if cascade:  # _shrink_model sizes box_head / box_predictor: copied to every stage below
            heads.box_head, heads.box_predictor = {}, {}
        _shrink_model(model, 32, NUM_CLASSES)
        # its ResNet-18 at half width (32..256 channels, GroupNorm): a quarter of the weights to
        # initialise, for a test that builds 25 models
        bottom_up.stem.out_channels = 32
        bottom_up.stages = [
            L(ResNet.make_stage)(
                block_class=BasicBlock,
                num_blocks=2,
                stride_per_block=[stride, 1],
                in_channels=32 * max(1, 2 ** (i - 1)),
                out_channels=32 * 2**i,
                norm="GN",
            )
            for i, stride in enumerate([1, 2, 2, 2])
        ]
        refinement = heads.get("refinement", None)
        if refinement is not None and refinement.get("bottleneck_channels", 0):
            refinement.bottleneck_channels = 8  # the efficient config's 64 of 256 channels
        side = heads.box_pooler.output_size // heads.get("box_refinement_downsample", 1)
        if "box_head" in heads:
            heads.box_head.input_shape = ShapeSpec(channels=32, height=side, width=side)
        if cascade:
            head, predictor = heads.pop("box_head"), heads.pop("box_predictor")
            for stage_head in heads.box_heads:
                stage_head.update(input_shape=head.input_shape, fc_dims=head.fc_dims)
            for stage_predictor in heads.box_predictors:
                stage_predictor.input_shape = predictor.input_shape
        return model
    rpn = model.proposal_generator
    rpn.batch_size_per_image = 64
    rpn.pre_nms_topk = (128, 64)
    rpn.post_nms_topk = (64, 32)
    heads.num_classes = NUM_CLASSES
    heads.batch_size_per_image = 32
    heads.box_head.fc_dims = [64, 64]
    heads.box_predictor.input_shape = ShapeSpec(channels=64)
    return model


def _tiny_yacs(cfg):
    """The yacs equivalent of ``_shrink_model``."""
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 128, 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 64, 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    return cfg


def _plain(obj):
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    return repr(obj)


def tiny_model(config):
    """The tiny model of a config (relative to ``configs/``).

    Returns:
        tuple[str, callable]: a key equal for configs whose tiny models are the same, and a
        function that builds the model (from the current random state).
    """
    from omegaconf import OmegaConf

    from sa_ejhead import model_zoo

    cfg = model_zoo.get_config(config)
    if isinstance(cfg, CfgNode):
        cfg = _tiny_yacs(cfg)
        return "yacs:" + cfg.MODEL.dump(), lambda: build_model(cfg)
    model = _tiny_lazy(cfg.model)
    key = json.dumps(OmegaConf.to_container(model, resolve=True), sort_keys=True, default=_plain)
    return "lazy:" + key, lambda: instantiate(model)


def groups(configs):
    """``[(configs, build)]``: the configs grouped by identical tiny model, in order."""
    found = {}
    for config in configs:
        key, build = tiny_model(config)
        found.setdefault(key, ([], build))[0].append(config)
    return list(found.values())


def synthetic_batch(with_targets=True):
    """Two images (96x128 and 80x112, BGR floats) with a few objects; the first image's masks are
    bitmasks, the second's polygons. Deterministic."""
    rng = np.random.RandomState(0)
    specs = [
        ((96, 128), [(8, 10, 60, 70, 0), (50, 30, 120, 90, 1), (70, 5, 100, 40, 2)]),
        ((80, 112), [(20, 12, 90, 70, 2), (5, 40, 40, 78, 0)]),
    ]
    batch = []
    for i, ((h, w), objects) in enumerate(specs):
        image = rng.randint(0, 60, size=(3, h, w)).astype(np.float32)
        boxes, classes, bitmasks, polygons = [], [], [], []
        for x0, y0, x1, y1, cls in objects:
            color = rng.randint(100, 256, size=3).astype(np.float32)
            # an ellipse inscribed in the box
            yy, xx = np.mgrid[0:h, 0:w]
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            image[:, inside] = color[:, None]
            t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
            poly = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1).ravel()
            boxes.append([x0, y0, x1, y1])
            classes.append(cls)
            bitmasks.append(torch.from_numpy(inside))
            polygons.append([poly])
        item = {"image": torch.from_numpy(image), "height": h, "width": w}
        if with_targets:
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
            inst.gt_classes = torch.tensor(classes)
            inst.gt_masks = BitMasks(torch.stack(bitmasks)) if i == 0 else PolygonMasks(polygons)
            item["instances"] = inst
        batch.append(item)
    return batch


def _predictors(model):
    predictors = model.roi_heads.box_predictor
    return list(predictors) if isinstance(predictors, torch.nn.ModuleList) else [predictors]


def _instances(inst, digest_masks=True):
    """Boxes, scores, classes and masks (N x 1 x 28 x 28 probabilities, or with
    ``digest_masks`` their :func:`mask_digest`) of predicted instances."""
    masks = inst.pred_masks
    return {
        "boxes": inst.pred_boxes.tensor,
        "scores": inst.scores,
        "classes": inst.pred_classes,
        "masks": mask_digest(masks) if digest_masks else masks,
    }


def mask_digest(masks):
    """N x 2 float64: each mask's sum and its dot product with fixed random weights. Equal for
    equal masks; any change of a value changes it (and it keeps the file small)."""
    weights = torch.rand(masks.shape[1:], generator=torch.Generator().manual_seed(0))
    flat = masks.double().flatten(1)
    return torch.stack([flat.sum(1), flat @ weights.double().flatten()], dim=1)


def _packed(named):
    """``{name: tensor}`` as one tensor (the names apart): one entry in the file, not many."""
    return {"names": list(named), "values": torch.stack(list(named.values()))}


def compute(model):
    """One training forward and backward, then one inference, of a freshly built model.

    Returns:
        dict: ``losses`` (loss values), ``grads`` (per parameter, the [sum, norm] of its
        gradient, float64), each packed (names, values), and ``predictions`` (per image: boxes,
        scores, classes, mask digests).
    """
    # the ResNet bottom-up is Detectron2's: no gradients there (a third of the time saved)
    model.backbone.bottom_up.requires_grad_(False)
    torch.manual_seed(1)  # the RPN's and the ROI heads' sampling
    model.train()
    with EventStorage():
        losses = model(synthetic_batch())
    sum(losses.values()).backward()
    grads = {
        name: torch.stack([p.grad.double().sum(), p.grad.double().norm()])
        for name, p in model.named_parameters()
        if p.grad is not None
    }
    model.eval()
    for predictor in _predictors(model):
        predictor.test_score_thresh = 0.0
        predictor.test_topk_per_image = TOPK
    with torch.no_grad():
        outputs = model.inference(synthetic_batch(with_targets=False), do_postprocess=False)
    return {
        "losses": _packed({k: v.detach() for k, v in losses.items()}),
        "grads": _packed(grads),
        "predictions": [_instances(o) for o in outputs],
    }


def zoo_image():
    """Image 0 of ``sa_shapes_val`` (192x256), rendered by the SA-Shapes generator in memory, as
    the demo's test mapper gives it to the model (BGR, native scale)."""
    from sa_ejhead.data.synthetic import _render_image, _split_seed

    rgb, _ = _render_image(np.random.default_rng(_split_seed(0, "val", 0)), 192, 256)
    image = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))
    return {"image": image.float(), "height": 192, "width": 256}


def zoo_model():
    """The model zoo's trained ``demo/sa_shapes.py`` model, in eval mode (what
    ``model_zoo.get(..., trained=True)`` builds), and the weights its checkpoint left unset."""
    from sa_ejhead import model_zoo
    from sa_ejhead.engine import load_weights

    cfg = model_zoo.get_config(ZOO_CONFIG, trained=True)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    missing = load_weights(model, cfg.train.init_checkpoint)
    return model.eval(), missing


def zoo_predictions(model):
    """The trained model's predictions on :func:`zoo_image` (masks in full)."""
    with torch.no_grad():
        (out,) = model.inference([zoo_image()], do_postprocess=False)
    return _instances(out, digest_masks=False)


def main():
    torch.set_num_threads(1)  # as the test suite (tests/conftest.py)
    configs = shipped_configs()
    began = time.perf_counter()
    records, index = [], {}
    for members, build in groups(configs):
        start = time.perf_counter()
        torch.manual_seed(0)
        record = compute(build())
        print(f"{time.perf_counter() - start:.2f} s")
        for config in members:
            index[config] = len(records)
        records.append(record)
        print(f"{len(records)}: {', '.join(members)}")
    print(f"all configs: {time.perf_counter() - began:.1f} s")
    data = {
        "configs": configs,
        "index": index,
        "records": records,
        "zoo": {"config": ZOO_CONFIG, "predictions": zoo_predictions(zoo_model()[0])},
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
    }
    os.makedirs(os.path.dirname(REFERENCE), exist_ok=True)
    torch.save(data, REFERENCE)
    print(f"wrote {REFERENCE} ({os.path.getsize(REFERENCE)} bytes)")


if __name__ == "__main__":
    main()
