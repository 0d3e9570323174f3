"""Deployment: tiny models exported to TorchScript and ONNX (onnxruntime) match the eager model.

The full-size check (ResNet-50, 800x1216) is ``tools/benchmark.py --deploy`` (docs/deploy.md).
"""

import json
import os
import runpy
import sys

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec, paste_masks_in_image

from _helpers import (
    onnx_nodes,
    tiny_lazy_config,
    tiny_yacs_config,
    write_tiny_coco,
    write_tiny_lazy_config_file,
)
from sa_ejhead.export import (
    MASK_IOU_MIN,
    ExportedModel,
    check_parity,
    condition_random_heads,
    export_formats,
    export_model,
    format_deploy_table,
    limit_nms_candidates,
    measure_deploy,
    paste_masks_numpy,
    postprocess_numpy,
)
from sa_ejhead.model_zoo import get_config_file
from sa_ejhead.modeling import ThreadedROIAlign

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "baseline": "common/models/mask_rcnn_fpn.py",  # Detectron2's Mask R-CNN FPN
    "faithful": get_config_file("common/models/mask_rcnn_safpn_ejhead.py"),
    "efficient": get_config_file("common/models/mask_rcnn_safpn_ejhead_efficient.py"),
}


def _image(height, width, seed):
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed))


def _tiny_model(kind):
    """A tiny (ResNet-18, 32 channels) random model of one of the three configs, its output
    layers conditioned (condition_random_heads) so that it detects objects with masks."""
    model_cfg = tiny_lazy_config("unused", "unused", "unused", model_config=MODELS[kind]).model
    if kind == "efficient":
        model_cfg.roi_heads.refinement.bottleneck_channels = 8
        model_cfg.roi_heads.box_head.input_shape = ShapeSpec(channels=32, height=7, width=7)
    torch.manual_seed(0)
    model = instantiate(model_cfg).eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.01
    return condition_random_heads(model, [_image(64, 80, 0).float()])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """kind -> (eager model, {runtime: ExportedModel}), traced on a 64x80 image."""
    out = {}
    for kind in MODELS:
        model = _tiny_model(kind)
        folder = str(tmp_path_factory.mktemp(kind))
        runtimes = export_formats(model, _image(64, 80, 0).float(), folder, num_threads=1)
        out[kind] = (model, {k: v["model"] for k, v in runtimes.items()})
    return out


@pytest.mark.parametrize("kind", list(MODELS))
def test_exported_models_match_eager(exported, kind):
    model, runtimes = exported[kind]
    inputs = [
        {"image": _image(64, 80, 0).float()},  # the traced size
        {"image": _image(72, 97, 1).float(), "height": 144, "width": 194},  # odd size, rescaled
        {"image": _image(96, 64, 2).float()},  # portrait
    ]
    report = check_parity(model, runtimes, inputs)
    for runtime, result in report.items():
        summary = result["summary"]
        assert summary["expected"] >= 3 * 5, (runtime, summary)  # detections on every image
        assert summary["ok"], (runtime, result["images"])
        assert summary["mask_iou_min"] >= MASK_IOU_MIN
    # TorchScript runs the same kernels as eager
    assert report["torchscript"]["summary"]["box_max_abs"] == 0.0


def test_graph_has_roi_align_and_nms(exported):
    """RoIAlign (half-pixel, i.e. aligned=True) and NMS are ONNX ops, not Python loops: one
    RoiAlign per pyramid level in the box and the mask pooler, NMS in the RPN and box head (in
    the branch of an ``If`` on "any boxes at all")."""
    model, runtimes = exported["faithful"]
    nodes = list(onnx_nodes(onnx.load(runtimes["onnxruntime"].path).graph))
    roi_aligns = [n for n in nodes if n.op_type == "RoiAlign"]
    assert len(roi_aligns) == 8
    for node in roi_aligns:
        attrs = {a.name: a for a in node.attribute}
        assert attrs["coordinate_transformation_mode"].s == b"half_pixel"
    assert sum(n.op_type == "NonMaxSuppression" for n in nodes) == 2
    ts_graph = str(torch.jit.load(runtimes["torchscript"].path).inlined_graph)
    assert ts_graph.count("torchvision::roi_align") == 8


def test_threaded_roi_align_traces_as_the_plain_op(tmp_path):
    """EJ-Head's ThreadedROIAlign splits RoIs over threads in eager inference; while tracing it
    must take the plain path (worker threads are not recorded), so the export stays exact."""
    model = _tiny_model("faithful")
    levels = model.roi_heads.box_pooler.level_poolers
    assert all(isinstance(level, ThreadedROIAlign) for level in levels)
    for level in levels:
        level.min_rois_per_thread = 1  # threaded for any number of RoIs
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        feature = torch.rand(1, 32, 8, 8)
        rois = torch.tensor([[0.0, 0, 0, 4, 4]] * 8)
        assert levels[0].num_chunks(feature, len(rois)) == 2
        runtimes = export_formats(model, _image(64, 80, 0).float(), str(tmp_path))
        report = check_parity(
            model, {k: v["model"] for k, v in runtimes.items()}, [{"image": _image(80, 64, 3)}]
        )
    finally:
        torch.set_num_threads(previous)
    assert all(r["summary"]["ok"] and r["summary"]["expected"] > 0 for r in report.values())


def test_zero_detections(tmp_path):
    """No detection, at trace time or only at run time: empty outputs of the right shapes."""
    model = _tiny_model("faithful")
    images = [_image(64, 80, 0).float(), torch.zeros(3, 64, 80)]
    with torch.no_grad():
        best = [float(model([{"image": x}])[0]["instances"].scores.max()) for x in images]
    assert abs(best[0] - best[1]) > 1e-3
    # a threshold between the two images' best scores: one has detections, the other none
    model.roi_heads.box_predictor.test_score_thresh = sum(best) / 2
    traced_on, empty = (0, 1) if best[0] > best[1] else (1, 0)
    runtimes = export_formats(model, images[traced_on], str(tmp_path / "some"))
    for item in runtimes.values():
        assert len(item["model"]([{"image": images[traced_on]}])[0]["instances"]) > 0
        instances = item["model"]([{"image": images[empty]}])[0]["instances"]
        assert len(instances) == 0 and tuple(instances.pred_masks.shape) == (0, 64, 80)
    # traced with no detection at all (ONNX only, to keep the suite short)
    model.roi_heads.box_predictor.test_score_thresh = 1.01
    runtimes = export_formats(model, images[0], str(tmp_path / "none"), ["onnxruntime"])
    for item in runtimes.values():
        for image in images:
            instances = item["model"]([{"image": image, "height": 32, "width": 40}])[0]
            assert len(instances["instances"]) == 0
            assert tuple(instances["instances"].pred_masks.shape) == (0, 32, 40)


def test_numpy_paste_matches_detectron2():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 28, 28, generator=g)
    boxes = torch.rand(12, 4, generator=g) * torch.tensor([90.0, 70, 90, 70]) - 10
    boxes[:, 2:] = boxes[:, :2] + torch.rand(12, 2, generator=g) * 60 + 0.5  # some cross the edge
    boxes[0] = torch.tensor([3.2, 4.7, 5.1, 6.0])  # smaller than a pixel of the mask grid
    expected = paste_masks_in_image(masks, boxes, (64, 80)).numpy()
    actual = paste_masks_numpy(masks.numpy(), boxes.numpy(), 64, 80)
    assert actual.shape == expected.shape and actual.dtype == bool
    # the same bilinear sampling; float32 rounding may flip a pixel at exactly 0.5
    assert (actual != expected).sum() <= 2
    assert paste_masks_numpy(np.zeros((0, 28, 28)), np.zeros((0, 4)), 64, 80).shape == (0, 64, 80)


def test_numpy_postprocess_matches_exported_model(exported):
    """onnxruntime + NumPy only (the README's snippet) gives ExportedModel's predictions."""
    _, runtimes = exported["faithful"]
    onnx_model = runtimes["onnxruntime"]
    image = _image(72, 97, 1).float()
    expected = onnx_model([{"image": image, "height": 144, "width": 194}])[0]["instances"]
    outputs = {k: v.numpy() for k, v in onnx_model.run(image.numpy()).items()}
    actual = postprocess_numpy(outputs, 144, 194)
    assert len(expected) > 0 and len(actual["boxes"]) == len(expected)
    np.testing.assert_allclose(actual["boxes"], expected.pred_boxes.tensor.numpy(), atol=1e-4)
    np.testing.assert_array_equal(actual["classes"], expected.pred_classes.numpy())
    assert (actual["masks"] != expected.pred_masks.numpy()).sum() <= 2


def test_opset_below_16_is_refused(tmp_path):
    model = _tiny_model("baseline")
    with pytest.raises(ValueError, match="opset 11"):
        export_model(model, _image(64, 64, 0).float(), str(tmp_path), "onnx", opset=11)


def test_export_tool_lazy_onnx_with_eval(tmp_path, monkeypatch):
    """tools/deploy/export_model.py: LazyConfig, ONNX, parity on the sample image, and COCO AP
    of the exported model equal to the eager model's."""
    from detectron2.config import LazyConfig
    from sa_ejhead.engine.lazy import do_test
    from sa_ejhead.engine import build_cpu_model
    from sa_ejhead.export.cli import sample_inputs

    json_file, image_root = write_tiny_coco(str(tmp_path / "data"), num_images=3, seed=3)
    names = dict(train_dataset="deploy_val", test_dataset="deploy_val")
    config = str(tmp_path / "tiny.py")
    write_tiny_lazy_config_file(config, output_dir="", model_config=MODELS["faithful"], **names)
    out = str(tmp_path / "out")
    argv = ["--config-file", config, "--format", "onnx", "--output", out, "--run-eval"]
    argv += ["--coco-dataset", f"deploy_val={json_file},{image_root}"]
    argv += ["model.roi_heads.box_predictor.test_score_thresh=0.0"]
    monkeypatch.setattr(sys, "argv", ["export_model.py"] + argv)
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(
            os.path.join(REPO, "tools", "deploy", "export_model.py"), run_name="__main__"
        )
    assert exit_status.value.code == 0

    with open(os.path.join(out, "model.onnx.json")) as f:
        metadata = json.load(f)
    assert metadata["opset"] == 17 and metadata["format"] == "onnx"
    assert [o["name"] for o in metadata["outputs"]] == [
        "pred_boxes",
        "pred_classes",
        "pred_masks",
        "scores",
        "image_size",
    ]
    assert metadata["size_policy"]["resize_before_model"]["ResizeShortestEdge"]["max_size"] == 128
    assert metadata["parity_check"]["ok"] and metadata["parity_check"]["images"] == 2
    # the eager model the tool exported: same seed, random heads conditioned on the sample image
    cfg = LazyConfig.load(config)
    cfg.model.roi_heads.box_predictor.test_score_thresh = 0.0
    model, _ = build_cpu_model(cfg)
    condition_random_heads(model, [sample_inputs(cfg, model)["image"]])
    eager = do_test(cfg, model)
    for task in ("bbox", "segm"):
        assert metadata["evaluation"][task]["AP"] == pytest.approx(eager[task]["AP"], abs=0.1)


def test_export_tool_yacs_torchscript(tmp_path):
    from sa_ejhead.export.cli import main

    cfg = tiny_yacs_config("unused", "unused", str(tmp_path))
    config = str(tmp_path / "tiny.yaml")
    with open(config, "w") as f:
        f.write(cfg.dump())
    write_tiny_coco(str(tmp_path / "data"), num_images=1, seed=4)
    sample = str(tmp_path / "data" / "images" / "0000.png")
    argv = ["--config-file", config, "--sample-image", sample, "--output", str(tmp_path / "out")]
    metadata = main(argv + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    assert metadata["format"] == "torchscript" and metadata["roi_heads"] == "EJROIHeads"
    assert metadata["size_policy"]["traced_on"] == [64, 64]
    assert metadata["parity_check"]["ok"]
    assert os.path.isfile(tmp_path / "out" / "model.ts")


def test_measure_deploy_latency_and_table():
    """The figures behind ``tools/benchmark.py --deploy``: eager, TorchScript and onnxruntime
    latency on the same inputs, with the exports' parity."""
    model = _tiny_model("efficient")
    inputs = [{"image": _image(64, 80, 5).float()}]
    threshold = limit_nms_candidates(model, inputs, candidates=20)
    predictor = model.roi_heads.box_predictor
    assert threshold == predictor.test_score_thresh > 0.01
    result = measure_deploy(model, inputs, runs=1, warmup=1, num_threads=1)
    assert result["threads"] == 1
    for runtime in ("torchscript", "onnxruntime"):
        assert result[runtime]["median"] > 0 and result[runtime]["export_s"] > 0
        assert result[runtime]["parity"]["ok"]
    table = format_deploy_table([{"label": "tiny", "deploy": result}])
    assert "| tiny " in table and "(1.00x)" in table and "1 threads" in table
