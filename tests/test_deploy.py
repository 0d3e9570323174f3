"""Deployment: tiny models exported to TorchScript and ONNX (onnxruntime) match the eager model,
and tools/deploy/export_model.py with both config systems.

The full-size check (ResNet-50, 800x1216) is ``tools/benchmark.py --deploy`` (docs/deploy.md).
"""

import json
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec

from _helpers import (
    onnx_nodes,
    run_tool_script,
    tiny_lazy_config,
    tiny_yacs_config,
    write_tiny_coco,
    write_tiny_lazy_config_file,
)
from sa_ejhead.engine import build_cpu_model, build_test_loader, do_test
from sa_ejhead.export import MASK_IOU_MIN, check_parity, export_model
from sa_ejhead.model_zoo import get_config_file
from sa_ejhead.modeling import ThreadedROIAlign
from sa_ejhead_lab import report
from sa_ejhead_lab.deploy import (
    condition_random_heads,
    export_formats,
    limit_nms_candidates,
    measure_deploy_many,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

MODELS = {
    "baseline": "common/models/mask_rcnn_fpn.py",  # Detectron2's Mask R-CNN FPN
    "faithful": get_config_file("common/models/mask_rcnn_safpn_ejhead.py"),
    "efficient": get_config_file("common/models/mask_rcnn_safpn_ejhead_efficient.py"),
}
EXPORT_TOOL = os.path.join("deploy", "export_model.py")


def _image(height, width, seed):
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed))


def _tiny_model(kind, **roi_heads):
    """A tiny (ResNet-18, 32 channels) random model of one of the configs (``roi_heads``: its
    ROI heads' arguments changed), its output layers conditioned (condition_random_heads) so
    that it detects objects with masks."""
    model_cfg = tiny_lazy_config("unused", "unused", "unused", model_config=MODELS[kind]).model
    model_cfg.roi_heads.update(roi_heads)
    if kind == "efficient":
        model_cfg.roi_heads.refinement.bottleneck_channels = 8
        model_cfg.roi_heads.box_head.input_shape = ShapeSpec(channels=32, height=7, width=7)
    torch.manual_seed(0)
    model = instantiate(model_cfg).eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.01
    return condition_random_heads(model, [_image(64, 80, 0).float()])


class _threads:
    """``torch.set_num_threads(n)`` within a ``with`` block."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(eager model, {runtime: ExportedModel}) of the tiny SA-FPN + EJ-Head, traced on a 64x80
    image (the efficient model: test_efficient_model_exports_also_with_zero_detections).

    It pools with ThreadedROIAlign splitting any number of RoIs, and TorchScript is traced where
    torch.get_num_threads() answers 2 while tracing, so that the threaded path would be taken if
    tracing did not avoid it (the worker threads' RoIAlign would then be missing from the graph).
    The intra-op pool keeps one thread: with 2, a loaded 2-core machine traced 4 times slower
    (4.1 s against 1.0 s), and ThreadedROIAlign splits by the answer alone (the eager run before
    the trace gets the true count: its thread pool would otherwise set 2 for the process). ONNX
    is traced with one thread too.
    """
    model = _tiny_model("faithful", threaded_pooling=True)
    for level in model.roi_heads.box_pooler.level_poolers:
        level.min_rois_per_thread = 1
    folder, image = str(tmp_path_factory.mktemp("faithful")), _image(64, 80, 0).float()
    threads, get_num_threads = torch.get_num_threads(), torch.get_num_threads
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            tracing_2 = lambda: 2 if torch.jit.is_tracing() else get_num_threads()  # noqa: E731
            monkeypatch.setattr(torch, "get_num_threads", tracing_2)
            runtimes = export_formats(model, image, folder, ["torchscript"], num_threads=1)
    finally:
        torch.set_num_threads(threads)  # (a threaded RoIAlign in the trace would have set 2)
    runtimes.update(export_formats(model, image, folder, ["onnxruntime"], num_threads=1))
    return model, {k: v["model"] for k, v in runtimes.items()}


@pytest.mark.slow
def test_exported_model_matches_eager(exported):
    model, runtimes = exported
    inputs = [
        {"image": _image(64, 80, 0).float()},  # the traced size
        {"image": _image(72, 97, 1).float(), "height": 144, "width": 194},  # odd size, rescaled
        {"image": _image(96, 64, 2).float()},  # portrait
    ]
    parity = check_parity(model, runtimes, inputs)
    for runtime, result in parity.items():
        summary = result["summary"]
        assert summary["expected"] >= 3 * 5, (runtime, summary)  # detections on every image
        assert summary["ok"], (runtime, result["images"])
        assert summary["mask_iou_min"] >= MASK_IOU_MIN
    # TorchScript runs the same kernels as eager
    assert parity["torchscript"]["summary"]["box_max_abs"] == 0.0


def test_threaded_roi_align_traces_as_the_plain_op(exported):
    """EJ-Head's ThreadedROIAlign splits RoIs over threads in eager inference; while tracing it
    must take the plain path (worker threads are not recorded), so the export stays exact."""
    model, runtimes = exported
    levels = model.roi_heads.box_pooler.level_poolers
    assert all(isinstance(level, ThreadedROIAlign) for level in levels)
    with _threads(2):  # eager inference splits the RoIs over 2 threads
        assert levels[0].num_chunks(torch.rand(1, 32, 8, 8), 8) == 2
    # and yet the graph has the plain op, one per level and pooler, and matches eager
    ts_graph = str(torch.jit.load(runtimes["torchscript"].path).inlined_graph)
    assert ts_graph.count("torchvision::roi_align") == 8
    parity = check_parity(model, runtimes, [{"image": _image(80, 64, 3)}])
    assert all(r["summary"]["ok"] and r["summary"]["expected"] > 0 for r in parity.values())


def test_graph_has_roi_align_and_nms(exported):
    """RoIAlign (half-pixel, i.e. aligned=True) and NMS are ONNX ops, not Python loops: one
    RoiAlign per pyramid level in the box and the mask pooler, NMS in the RPN and box head (in
    the branch of an ``If`` on "any boxes at all")."""
    _, runtimes = exported
    nodes = list(onnx_nodes(onnx.load(runtimes["onnxruntime"].path).graph))
    roi_aligns = [n for n in nodes if n.op_type == "RoiAlign"]
    assert len(roi_aligns) == 8
    for node in roi_aligns:
        attrs = {a.name: a for a in node.attribute}
        assert attrs["coordinate_transformation_mode"].s == b"half_pixel"
    assert sum(n.op_type == "NonMaxSuppression" for n in nodes) == 2


@pytest.mark.slow
def test_efficient_model_exports_also_with_zero_detections(tmp_path):
    """The efficient model in ONNX: it matches eager; with no detection at run time, or already
    at trace time, it gives empty outputs of the right shapes (onnxruntime's kernels on empty
    tensors; TorchScript runs eager's)."""
    model = _tiny_model("efficient")
    images = [_image(64, 80, 0).float(), torch.zeros(3, 64, 80)]
    with torch.no_grad():
        best = [float(model([{"image": x}])[0]["instances"].scores.max()) for x in images]
    assert abs(best[0] - best[1]) > 1e-3
    # a threshold between the two images' best scores: one has detections, the other none
    model.roi_heads.box_predictor.test_score_thresh = sum(best) / 2
    traced_on, empty = (0, 1) if best[0] > best[1] else (1, 0)
    onnx_model = export_formats(model, images[traced_on], str(tmp_path / "some"), ["onnxruntime"])
    onnx_model = onnx_model["onnxruntime"]["model"]
    inputs = [{"image": images[traced_on]}, {"image": _image(72, 97, 1).float()}]
    parity = check_parity(model, {"onnxruntime": onnx_model}, inputs)["onnxruntime"]["summary"]
    assert parity["ok"] and parity["expected"] > 0, parity
    instances = onnx_model([{"image": images[empty]}])[0]["instances"]
    assert len(instances) == 0 and tuple(instances.pred_masks.shape) == (0, 64, 80)
    # traced with no detection at all
    model.roi_heads.box_predictor.test_score_thresh = 1.01
    runtimes = export_formats(model, images[0], str(tmp_path / "none"), ["onnxruntime"])
    for image in images:
        result = runtimes["onnxruntime"]["model"]([{"image": image, "height": 32, "width": 40}])
        assert len(result[0]["instances"]) == 0
        assert tuple(result[0]["instances"].pred_masks.shape) == (0, 32, 40)


def test_opset_below_16_is_refused(exported, tmp_path):
    model, _ = exported
    with pytest.raises(ValueError, match="opset 11"):
        export_model(model, _image(64, 64, 0).float(), str(tmp_path), "onnx", opset=11)


@pytest.mark.slow
def test_export_tool_lazy_onnx_with_eval(tmp_path, monkeypatch):
    """tools/deploy/export_model.py: LazyConfig, TorchScript, parity on the sample image, and
    COCO AP of the exported model equal to the eager model's."""
    json_file, image_root = write_tiny_coco(str(tmp_path / "data"), num_images=2, seed=3)
    names = dict(train_dataset="deploy_val", test_dataset="deploy_val")
    config = str(tmp_path / "tiny.py")
    write_tiny_lazy_config_file(config, output_dir="", model_config=MODELS["faithful"], **names)
    out = str(tmp_path / "out")
    argv = ["--config-file", config, "--output", out, "--run-eval"]
    argv += ["--coco-dataset", f"deploy_val={json_file},{image_root}"]
    argv += ["model.roi_heads.box_predictor.test_score_thresh=0.0"]
    assert run_tool_script(EXPORT_TOOL, argv, monkeypatch) == 0

    with open(os.path.join(out, "model.ts.json")) as f:
        metadata = json.load(f)
    assert metadata["format"] == "torchscript" and metadata["opset"] is None
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
    condition_random_heads(model, [next(iter(build_test_loader(cfg)))[0]["image"]])
    eager = do_test(cfg, model)
    for task in ("bbox", "segm"):
        assert metadata["evaluation"][task]["AP"] == pytest.approx(eager[task]["AP"], abs=0.1)


@pytest.mark.slow
def test_export_tool_yacs_torchscript(tmp_path, monkeypatch, capsys):
    cfg = tiny_yacs_config("unused", "unused", str(tmp_path))
    config = str(tmp_path / "tiny.yaml")
    with open(config, "w") as f:
        f.write(cfg.dump())
    write_tiny_coco(str(tmp_path / "data"), num_images=1, seed=4)
    sample = str(tmp_path / "data" / "images" / "0000.png")
    out = tmp_path / "out"
    argv = ["--config-file", config, "--sample-image", sample, "--output", str(out)]
    overrides = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    assert run_tool_script(EXPORT_TOOL, argv + overrides, monkeypatch) == 0
    metadata = json.loads((out / "model.ts.json").read_text())
    assert metadata["format"] == "torchscript" and metadata["roi_heads"] == "EJROIHeads"
    assert metadata["size_policy"]["traced_on"] == [64, 64]
    assert metadata["parity_check"]["ok"] and metadata["parity_check"]["expected"] > 0
    assert os.path.isfile(out / "model.ts")
    # an ONNX opset without RoiAlign's half-pixel mode: the one-line error, before any export
    argv += ["--format", "onnx", "--opset", "11"]
    assert run_tool_script(EXPORT_TOOL, argv, monkeypatch) == 1
    assert "--opset 11" in capsys.readouterr().err
    assert not (out / "model.onnx").exists()


@pytest.mark.slow
def test_measure_deploy_latency_and_table():
    """The figures behind ``tools/benchmark.py --deploy`` (TorchScript only, to be short): eager
    and exported latency on the same inputs, with the export's parity."""
    model = _tiny_model("baseline")
    inputs = [{"image": _image(64, 80, 5).float()}]
    threshold = limit_nms_candidates(model, inputs, candidates=20)
    assert threshold == model.roi_heads.box_predictor.test_score_thresh > 0.01
    result = measure_deploy_many(
        {"tiny": model}, inputs, runtimes=["torchscript"], runs=1, warmup=1, num_threads=1
    )["tiny"]
    assert result["threads"] == 1 and result["eager"]["median"] > 0
    figures = result["torchscript"]
    assert figures["median"] > 0 and figures["export_s"] > 0
    assert figures["parity"]["ok"] and figures["parity"]["expected"] > 0
    table = report.format_deploy_table([{"label": "tiny", "deploy": result}])
    row = next(line for line in table.splitlines() if line.startswith("| tiny "))
    ratio = figures["median"] / result["eager"]["median"]
    parity = figures["parity"]
    assert f"({ratio:.2f}x)" in row and f"ok {parity['matched']}/{parity['expected']}" in row
    assert "1 threads" in table
