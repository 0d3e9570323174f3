"""tools/benchmark.py and the cost tool's parts (sa_ejhead.analysis: specs, measure, report)."""

import importlib.util
import json
import os

import pytest
import torch

from detectron2.config import LazyConfig

from sa_ejhead.analysis import measure, report, specs
from sa_ejhead.errors import ConfigError
from sa_ejhead.evaluation import time_coco_eval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny Mask R-CNN (ResNet-18, 32-channel FPN, small heads) built from Detectron2's own
# common/models/mask_rcnn_fpn.py, written as a LazyConfig file so that specs can name it.
TINY_CONFIG = """
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.modeling.backbone import ResNet

model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="FrozenBN")
model.backbone.out_channels = 32
model.proposal_generator.head.in_channels = 32
model.roi_heads.num_classes = 3
model.roi_heads.batch_size_per_image = 32
model.roi_heads.box_head.input_shape = ShapeSpec(channels=32, height=7, width=7)
model.roi_heads.box_head.fc_dims = [64, 64]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=64)
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=32, height=14, width=14)
model.roi_heads.mask_head.conv_dims = [32, 32]
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Path of the tiny LazyConfig file."""
    path = tmp_path_factory.mktemp("configs") / "tiny_mask_rcnn.py"
    path.write_text(TINY_CONFIG)
    return str(path)


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_spec():
    s = specs.parse_spec("base=d2://common/models/mask_rcnn_fpn.py")
    assert (s.label, s.source, s.overrides) == ("base", "d2://common/models/mask_rcnn_fpn.py", [])
    s = specs.parse_spec("demo/sa_shapes.py, model.roi_heads.interleave=False ,x.dims=[1,2]")
    assert s.label == "sa_shapes"
    assert s.overrides == ["model.roi_heads.interleave=False", "x.dims=[1,2]"]
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        specs.parse_spec("demo/sa_shapes.py,oops")
    with pytest.raises(ValueError, match="Empty config source"):
        specs.parse_spec("label=")


def test_unknown_config_is_explained():
    with pytest.raises(ConfigError, match="d2://PATH"):
        specs.build_model_from_spec("no/such/config.py")


def _tiny_options(**changes):
    """Measurement options for the tiny configs: 64x96 images, 20 RoIs / 5 dets, one call."""
    options = {
        "input_size": (64, 96),
        "proposals": 20,
        "detections": 5,
        "runs": 1,
        "warmup": 0,
        "train_size": (64, 64),
        "train_batch": 1,
        "train_steps": 1,
        "threads": torch.get_num_threads(),
        "flops": True,
        "cuda": False,
    }
    options.update(changes)
    return options


def _tiny_specs(tiny):
    return [
        specs.parse_spec(f"a={tiny}"),
        specs.parse_spec(f"b={tiny},model.roi_heads.box_head.fc_dims=[64,64,64]"),
    ]


@pytest.fixture(scope="module")
def tiny_rows(tiny):
    """Two tiny configs measured in-process (no subprocess)."""
    options = _tiny_options()
    rows = measure.measure(_tiny_specs(tiny), options, isolate=False, log=lambda *_: None)
    return rows, options


def test_measure_fixes_roi_counts_and_counts_flops(tiny, tiny_rows):
    rows, options = tiny_rows
    a, b = rows
    model = specs.build_model_from_spec(tiny)
    assert a["params"] == sum(p.numel() for p in model.parameters())
    # the ROI heads saw exactly the requested RoIs and produced exactly the detections
    for row in rows:
        assert row["counts"] == {"proposals": [20], "detections": [5]}
        assert row["flops"]["counts"] == row["counts"]
        parts = row["flops"]["parts"]
        assert all(parts[p] > 0 for p in ("bottom_up", "neck", "roi_heads"))
        assert sum(parts.values()) == pytest.approx(row["flops"]["total"], rel=1e-6)
        assert row["cpu_latency"]["median"] > 0 and row["train_step"]["median"] > 0
        assert row["threads"] == options["threads"]
    # a third box fc: more parameters and more ROI-head FLOPs, same backbone FLOPs
    assert b["params"] > a["params"]
    assert b["flops"]["parts"]["roi_heads"] > a["flops"]["parts"]["roi_heads"]
    assert b["flops"]["parts"]["bottom_up"] == a["flops"]["parts"]["bottom_up"]


def test_roi_head_flops_scale_with_the_fixed_proposals(tiny):
    model = specs.build_model_from_spec(tiny)
    inputs = measure.random_inputs(64, 96)
    flops = {}
    for n in (10, 40):
        measure.fix_roi_counts(model, proposals=n, detections=5)
        flops[n] = measure.count_flops(model, inputs)
        assert flops[n]["counts"]["proposals"] == [n]
    assert flops[40]["parts"]["bottom_up"] == flops[10]["parts"]["bottom_up"]
    # 30 more RoIs through the box head's and predictor's fcs (RoIAlign is not counted)
    per_roi = sum(
        m.in_features * m.out_features
        for head in (model.roi_heads.box_head, model.roi_heads.box_predictor)
        for m in head.modules()
        if isinstance(m, torch.nn.Linear)
    )
    extra = flops[40]["parts"]["roi_heads"] - flops[10]["parts"]["roi_heads"]
    assert extra == 30 * per_roi


def test_cost_table_ratios(tiny_rows):
    rows, _ = tiny_rows
    text = report.format_cost_table(rows)
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["Config", "Params (M)", "GFLOPs", "CPU latency (s)"]
    a_row = next(l for l in lines if l.startswith("| a "))
    assert a_row.count("(1.00x)") >= 5  # every figure of the reference is 1.00x
    b_row = next(l for l in lines if l.startswith("| b "))
    ratio = rows[1]["params"] / rows[0]["params"]
    assert f"({ratio:.2f}x)" in b_row
    assert "CUDA" not in lines[0]  # no CUDA figures measured, no CUDA columns
    assert "| 20 / 5 " in text  # RoIs / detections column of the per-part table


def test_main_writes_json_and_prints_table(tiny, tmp_path, capsys):
    out = tmp_path / "bench.json"
    tool = _load_tool("benchmark")
    result = tool.main(
        [
            "--configs",
            f"tiny={tiny}",
            "--input-size",
            "64x96",
            "--proposals",
            "10",
            "--detections",
            "3",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--no-train",
            "--no-flops",
            "--no-isolate",
            "--output",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "| tiny " in printed and "torch threads" in printed
    assert "WARNING" not in printed
    saved = json.loads(out.read_text())
    assert saved["configs"][0]["counts"] == {"proposals": [10], "detections": [3]}
    assert result["configs"][0]["params"] == saved["configs"][0]["params"]
    with pytest.raises(SystemExit):
        tool.main([])


def test_coco_eval_timing_agrees():
    rows = time_coco_eval(num_images=6, dets_per_image=10, image_size=(96, 128), log=print)
    assert [r["iou_type"] for r in rows] == ["bbox", "segm"]
    for r in rows:
        assert r["pycocotools"] > 0
        if r["faster"] is not None:
            assert r["max_abs_diff"] < 1e-4
    assert "speed-up" in report.format_coco_eval_table(rows)


def test_efficient_config_sets_its_levers():
    cfg = LazyConfig.load(
        os.path.join(REPO, "configs/common/models/mask_rcnn_safpn_ejhead_efficient.py")
    )
    model = cfg.model
    assert model.backbone.mode == "sa" and model.backbone.share_laterals is True
    assert model.backbone.fuse_position == "before" and list(model.backbone.td_only_levels) == [
        "p2"
    ]
    assert model.roi_heads.refinement.mode == "residual"
    assert model.roi_heads.refinement.bottleneck_channels == 64
    assert model.roi_heads.box_pooler.output_size == 14  # Enriched RoIAlign kept
    assert model.roi_heads.box_refinement_downsample == 2
    assert model.roi_heads.interleave is True


def test_benchmark_spec_override_typo_is_an_error():
    """A misspelled override in a --configs spec is refused (not a silently added key)."""
    with pytest.raises(KeyError, match=r"Did you mean 'model\.roi_heads\.interleave'"):
        specs.build_model_from_spec(
            "common/models/mask_rcnn_safpn_ejhead.py, model.roi_heads.interleav=0"
        )


def _timing(times, cpu):
    return {
        "median": sorted(times)[len(times) // 2],
        "min": min(times),
        "times": times,
        "cpu_median": cpu,
    }


def test_merge_rounds_pools_timings_and_takes_the_median_peak():
    rounds = [
        {"params": 5, "cpu_latency": _timing([3.0, 1.0, 2.0], 4.0), "infer_peak_mb": 700.0},
        {"params": 5, "cpu_latency": _timing([0.5, 6.0, 5.0], 2.0), "infer_peak_mb": 500.0},
        {"params": 5, "cpu_latency": _timing([4.0, 4.5, 7.0], 3.0), "infer_peak_mb": 600.0},
    ]
    merged = measure.merge_rounds(rounds)
    assert merged["params"] == 5
    assert merged["cpu_latency"]["times"] == [3.0, 1.0, 2.0, 0.5, 6.0, 5.0, 4.0, 4.5, 7.0]
    assert merged["cpu_latency"]["median"] == 4.0 and merged["cpu_latency"]["min"] == 0.5
    assert merged["cpu_latency"]["cpu_median"] == 3.0
    assert merged["infer_peak_mb"] == 600.0
    assert [r["infer_peak_mb"] for r in merged["rounds"]] == [700.0, 500.0, 600.0]
    assert [r["cpu_latency"] for r in merged["rounds"]] == [2.0, 5.0, 4.5]
    assert measure.merge_rounds(rounds[:1]) == rounds[0]  # one round: unchanged


def test_rounds_interleave_the_configs(monkeypatch):
    calls = []

    def fake(spec, phase, options):
        calls.append((spec.label, phase, options["flops"]))
        t = float(len(calls))
        return {"cpu_latency": _timing([t], t)} if phase == "infer" else {"train_peak_mb": t}

    monkeypatch.setattr(measure, "measure_config", fake)
    pair = [specs.parse_spec("a=x.py"), specs.parse_spec("b=y.py")]
    rows = measure.measure(pair, {"flops": True}, False, ("infer", "train"), lambda m: None, 2)
    assert calls == [
        ("a", "infer", True),
        ("a", "train", True),
        ("b", "infer", True),
        ("b", "train", True),
        ("a", "infer", False),
        ("a", "train", False),
        ("b", "infer", False),
        ("b", "train", False),
    ]  # FLOPs in the first round only
    assert rows[0]["cpu_latency"]["times"] == [1.0, 5.0]
    assert rows[1]["train_peak_mb"] == (4.0 + 8.0) / 2
    assert rows[1]["rounds"] == [
        {"cpu_latency": 3.0, "train_peak_mb": 4.0},
        {"cpu_latency": 7.0, "train_peak_mb": 8.0},
    ]


def test_time_calls_gives_the_steps_turns():
    order = []
    timed = measure.time_calls(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, runs=2, warmup=1
    )
    assert order == ["a", "b"] * 3  # one call each, in turn, warm-up included
    assert [len(timed[k]["times"]) for k in "ab"] == [2, 2]


def test_paired_ratios_pair_call_by_call():
    ratio = measure.paired_ratios([2.0, 4.0, 3.0], [1.0, 2.0, 2.0])
    assert ratio == {"median": 2.0, "min": 1.5, "max": 2.0, "ratios": [2.0, 2.0, 1.5]}


def test_measure_paired_times_every_config_in_one_process(tiny):
    rows = measure.measure_paired(_tiny_specs(tiny), _tiny_options(paired=2, threads=1))
    assert [r["label"] for r in rows] == ["a", "b"]
    for key in ("cpu_latency", "train_step"):
        assert rows[0][key]["ratio"]["ratios"] == [1.0, 1.0]
        times, base = rows[1][key]["times"], rows[0][key]["times"]
        assert rows[1][key]["ratio"]["ratios"] == [t / b for t, b in zip(times, base)]
    table = report.format_paired_table(rows)
    assert "| b " in table and "1.00x (1.00-1.00x)" in table


def test_same_boxes_gives_every_model_the_same_proposals_and_detections(tiny):
    inputs = measure.random_inputs(64, 96)
    seen = {}
    for seed in (0, 1):  # two random models: different objectness and class scores
        for same in (False, True):
            model = specs.build_model_from_spec(tiny, seed=seed)
            measure.fix_roi_counts(model, proposals=20, detections=5, same_boxes=same)
            boxes = {}
            model.roi_heads.register_forward_hook(
                lambda m, inp, out: boxes.update(proposals=inp[2][0].proposal_boxes.tensor)
            )
            with torch.no_grad():
                boxes["detections"] = model(inputs)[0]["instances"].pred_boxes.tensor
            seen[seed, same] = boxes
    for key in ("proposals", "detections"):
        assert torch.equal(seen[0, True][key], seen[1, True][key])
        assert not torch.equal(seen[0, False][key], seen[1, False][key])
    assert len(seen[0, True]["proposals"]) == 20 and len(seen[0, True]["detections"]) == 5
