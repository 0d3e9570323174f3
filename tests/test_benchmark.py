"""tools/benchmark.py and the measurement lab (projects/lab/sa_ejhead_lab: specs, measure, report,
coco_eval), on the tiny Mask R-CNN of tests/_helpers.py."""

import json

import pytest
import torch
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

from _helpers import RES_FEATURES, run_tool_script, tiny_resnet, write_tiny_lazy_config_file
from sa_ejhead.errors import ConfigError
from sa_ejhead.model_zoo import get_config_file
from sa_ejhead.modeling import SAFPN
from sa_ejhead_lab import coco_eval, measure, report, specs

TINY_NAMES = dict(train_dataset="-", test_dataset="-", output_dir="")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Path of a LazyConfig file of the tiny Mask R-CNN (a spec's SOURCE)."""
    path = str(tmp_path_factory.mktemp("configs") / "tiny_mask_rcnn.py")
    return write_tiny_lazy_config_file(path, **TINY_NAMES)


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


def test_bad_config_specs_are_explained():
    with pytest.raises(ConfigError, match="d2://PATH"):
        specs.build_model_from_spec("no/such/config.py")
    # a misspelled override is refused, not a silently added key
    with pytest.raises(KeyError, match=r"Did you mean 'model\.roi_heads\.interleave'"):
        specs.load_spec_config(
            "common/models/mask_rcnn_safpn_ejhead.py, model.roi_heads.interleav=0"
        )


@pytest.mark.slow
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


@pytest.mark.slow
def test_roi_head_flops_scale_with_the_fixed_proposals(tiny, tiny_rows):
    rows, options = tiny_rows
    model = specs.build_model_from_spec(tiny)
    measure.fix_roi_counts(model, proposals=40, detections=5)
    flops = measure.count_flops(model, measure.random_inputs(*options["input_size"]))
    assert flops["counts"]["proposals"] == [40]
    assert flops["parts"]["bottom_up"] == rows[0]["flops"]["parts"]["bottom_up"]
    # 20 more RoIs than the row's through the box head's and predictor's fcs (RoIAlign is not
    # counted)
    per_roi = sum(
        m.in_features * m.out_features
        for head in (model.roi_heads.box_head, model.roi_heads.box_predictor)
        for m in head.modules()
        if isinstance(m, torch.nn.Linear)
    )
    assert flops["parts"]["roi_heads"] - rows[0]["flops"]["parts"]["roi_heads"] == 20 * per_roi


def test_cost_table_ratios(tiny_rows):
    rows, _ = tiny_rows
    text = report.format_cost_table(rows)
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["Config", "Params (M)", "GFLOPs", "CPU latency (s)"]
    b_row = next(l for l in lines if l.startswith("| b "))
    ratio = rows[1]["params"] / rows[0]["params"]
    assert ratio > 1 and f"({ratio:.2f}x)" in b_row
    assert "CUDA" not in lines[0]  # no CUDA figures measured, no CUDA columns
    assert "| 20 / 5 " in text  # RoIs / detections column of the per-part table


def test_tool_writes_json_and_prints_table(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    argv = ["--configs", f"tiny={tiny}", "--input-size", "64x96", "--proposals", "10"]
    argv += ["--detections", "3", "--runs", "1", "--warmup", "0", "--no-train", "--no-flops"]
    argv += ["--no-isolate", "--output", str(out)]
    assert run_tool_script("benchmark.py", argv, monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "| tiny " in printed and "torch threads" in printed
    assert "WARNING" not in printed
    saved = json.loads(out.read_text())
    assert saved["configs"][0]["counts"] == {"proposals": [10], "detections": [3]}
    assert saved["configs"][0]["params"] > 0
    assert run_tool_script("benchmark.py", [], monkeypatch) == 2  # nothing to do: usage error


def test_coco_eval_timing_agrees():
    rows = coco_eval.time_coco_eval(num_images=6, dets_per_image=10, image_size=(96, 128))
    assert [r["iou_type"] for r in rows] == ["bbox", "segm"]
    for r in rows:
        assert r["pycocotools"] > 0
        if r["faster"] is not None:
            assert r["max_abs_diff"] < 1e-4
    assert "speed-up" in report.format_coco_eval_table(rows)


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


def test_time_calls_gives_the_steps_turns_and_paired_ratios_pair_them():
    order = []
    timed = measure.time_calls(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, runs=2, warmup=1
    )
    assert order == ["a", "b"] * 3  # one call each, in turn, warm-up included
    assert [len(timed[k]["times"]) for k in "ab"] == [2, 2]
    ratio = measure.paired_ratios([2.0, 4.0, 3.0], [1.0, 2.0, 2.0])
    assert ratio == {"median": 2.0, "min": 1.5, "max": 2.0, "ratios": [2.0, 2.0, 1.5]}


@pytest.mark.slow
def test_measure_paired_times_every_config_in_turns(tiny):
    options = _tiny_options(paired=2, threads=1, input_size=(64, 64))
    rows = measure.measure_paired(_tiny_specs(tiny), options, isolate=False)
    assert [r["label"] for r in rows] == ["a", "b"]
    for key in ("cpu_latency", "train_step"):
        times, base = rows[1][key]["times"], rows[0][key]["times"]
        assert len(times) == len(base) == 2
        assert rows[1][key]["ratio"]["ratios"] == [t / b for t, b in zip(times, base)]
    table = report.format_paired_table(rows)
    ratio = rows[1]["cpu_latency"]["ratio"]["median"]
    assert f"{ratio:.2f}x" in next(line for line in table.splitlines() if line.startswith("| b "))


@pytest.mark.slow
def test_same_boxes_gives_every_model_the_same_proposals_and_detections(tiny):
    inputs = measure.random_inputs(64, 96)
    seen = {}
    for seed in (0, 1):  # two random models: different objectness and class scores
        model = specs.build_model_from_spec(tiny, seed=seed)
        boxes = {}
        model.roi_heads.register_forward_hook(
            lambda m, inp, out: boxes.update(proposals=inp[2][0].proposal_boxes.tensor)
        )
        for same in (False, True):
            measure.fix_roi_counts(model, proposals=20, detections=5, same_boxes=same)
            with torch.no_grad():
                boxes["detections"] = model(inputs)[0]["instances"].pred_boxes.tensor
            seen[seed, same] = dict(boxes)
    for key in ("proposals", "detections"):
        assert torch.equal(seen[0, True][key], seen[1, True][key])
        assert not torch.equal(seen[0, False][key], seen[1, False][key])
    assert len(seen[0, True]["proposals"]) == 20 and len(seen[0, True]["detections"]) == 5


# --- the neck table of docs/safpn.md ------------------------------------------------------------


IN_FEATURES = RES_FEATURES


class _NeckOnly(nn.Module):
    """A model whose only part is a backbone (bottom-up + neck), for the lab's counters."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, inputs):
        return self.backbone(torch.stack([x["image"] for x in inputs]))


def _neck_row(label, c, **kwargs):
    neck = SAFPN(tiny_resnet(), IN_FEATURES, c, top_block=LastLevelMaxPool(), **kwargs).eval()
    model = _NeckOnly(neck)
    flops = measure.count_flops(model, [{"image": torch.randn(3, 64, 96)}])
    return {
        "label": label,
        "overrides": [],
        "flops": flops,
        "param_parts": measure.count_params(model)["parts"],
    }


def test_neck_cost_counts_the_convolutions():
    bottom_up = tiny_resnet().eval()
    with torch.no_grad():
        feats = bottom_up(torch.randn(1, 3, 64, 96))
    shapes = bottom_up.output_shape()
    c = 16
    td = _neck_row("td", c, mode="td")
    hw = {f: feats[f].shape[-2] * feats[f].shape[-1] for f in IN_FEATURES}
    convs = sum((shapes[f].channels * c + 9 * c * c) * hw[f] for f in IN_FEATURES)
    upsample = sum(c * hw[f] for f in IN_FEATURES[:-1])  # nearest resize: 1 per output element
    assert td["flops"]["parts"]["neck"] == convs + upsample
    params = sum((shapes[f].channels + 1) * c + (9 * c + 1) * c for f in IN_FEATURES)
    assert td["param_parts"]["neck"] == params
    p2 = sum(v for k, v in td["flops"]["by_module"].items() if k[-1] == "2")
    assert p2 == (shapes["res2"].channels * c + 9 * c * c) * hw["res2"]
    sa = _neck_row("sa", c, mode="sa")
    buf_and_fuse = sum((shapes[f].channels * c + 9 * c * c + 2 * c * c) * hw[f] for f in hw)
    downs = sum(9 * c * c * hw[f] for f in IN_FEATURES[1:])
    assert (
        sa["flops"]["parts"]["neck"]
        == td["flops"]["parts"]["neck"] + buf_and_fuse + downs + upsample
    )
    # td+buf on shared laterals, merged before the output convs: td's parameters plus the BUF
    # pathway's three 3x3 stride-2 Down convs
    cheap = _neck_row("cheap", c, mode="td+buf", share_laterals=True, fuse_position="before")
    assert cheap["param_parts"]["neck"] == params + 3 * (9 * c * c + c)
    table = report.format_variant_table("necks", [td, sa]).splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table]
    assert cells[0][:3] == ["neck", "overrides", "params (M)"]
    assert cells[2][2] == f"{params / 1e6:.2f}"
    ratio = sa["flops"]["parts"]["neck"] / td["flops"]["parts"]["neck"]
    assert ratio > 1 and cells[3][4] == f"{ratio:.2f}"
    assert table[-1].startswith("| bottom-up (not in the rows above)")


@pytest.mark.slow
def test_tool_prints_the_neck_table(tmp_path, capsys, monkeypatch):
    """``--variants necks`` on a tiny SA-FPN model (the real table: docs/safpn.md)."""
    config = str(tmp_path / "tiny_safpn.py")
    safpn = get_config_file("common/models/mask_rcnn_safpn.py")
    write_tiny_lazy_config_file(config, model_config=safpn, **TINY_NAMES)
    variants = [("td", f"{config},model.backbone.mode=td"), ("sa", config)]
    monkeypatch.setitem(specs.VARIANTS, "necks", variants)
    argv = ["--variants", "necks", "--input-size", "64", "--proposals", "10", "--detections", "5"]
    out_file = tmp_path / "necks.json"
    assert run_tool_script("benchmark.py", argv + ["--output", str(out_file)], monkeypatch) == 0
    out = capsys.readouterr().out
    td, sa = json.loads(out_file.read_text())["configs"]
    rows = {l.split("|")[1].strip(): l.split("|")[2:5] for l in out.splitlines() if l[:2] == "| "}
    assert rows["td"][0].strip() == "`model.backbone.mode=td`" and rows["sa"][0].strip() == ""
    for label, row in (("td", td), ("sa", sa)):
        assert rows[label][1].strip() == f"{row['param_parts']['neck'] / 1e6:.2f}"
        assert rows[label][2].strip() == f"{row['flops']['parts']['neck'] / 1e9:.1f}"
    assert sa["flops"]["parts"]["neck"] > td["flops"]["parts"]["neck"] > 0
    bottom_up = rows["bottom-up (not in the rows above)"][1].strip()
    assert bottom_up == f"{td['param_parts']['bottom_up'] / 1e6:.2f}"
