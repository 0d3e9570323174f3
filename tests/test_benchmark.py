"""tools/benchmark.py (sa_ejhead.analysis.benchmark) and the CPU ablation's cache/table logic."""

import importlib.util
import json
import math
import os
import shutil
import threading
import time

import pytest
import torch

from detectron2.config import LazyConfig

from sa_ejhead.analysis import benchmark as B

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATION = os.path.join(REPO, "projects", "cpu_ablation")
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


def _load_ablation():
    spec = importlib.util.spec_from_file_location(
        "run_ablation", os.path.join(ABLATION, "run_ablation.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_spec():
    s = B.parse_spec("base=d2://common/models/mask_rcnn_fpn.py")
    assert (s.label, s.source, s.overrides) == ("base", "d2://common/models/mask_rcnn_fpn.py", [])
    s = B.parse_spec("demo/sa_shapes.py, model.roi_heads.interleave=False ,x.dims=[1,2]")
    assert s.label == "sa_shapes"
    assert s.overrides == ["model.roi_heads.interleave=False", "x.dims=[1,2]"]
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        B.parse_spec("demo/sa_shapes.py,oops")
    with pytest.raises(ValueError, match="Empty config source"):
        B.parse_spec("label=")


def test_unknown_config_is_explained():
    with pytest.raises(FileNotFoundError, match="d2://PATH"):
        B.build_model_from_spec("no/such/config.py")


@pytest.fixture(scope="module")
def tiny_rows(tiny):
    """Two tiny configs measured in-process (no subprocess) at 64x96 with 20 RoIs / 5 dets."""
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
    specs = [
        B.parse_spec(f"a={tiny}"),
        B.parse_spec(f"b={tiny},model.roi_heads.box_head.fc_dims=[64,64,64]"),
    ]
    rows = B.measure(specs, options, isolate=False, log=lambda *_: None)
    return rows, options


def test_measure_fixes_roi_counts_and_counts_flops(tiny, tiny_rows):
    rows, options = tiny_rows
    a, b = rows
    model = B.build_model_from_spec(tiny)
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
    model = B.build_model_from_spec(tiny)
    inputs = B.random_inputs(64, 96)
    flops = {}
    for n in (10, 40):
        B.fix_roi_counts(model, proposals=n, detections=5)
        flops[n] = B.count_flops(model, inputs)
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
    text = B.format_cost_table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| Config | Params (M) | GFLOPs | CPU latency (s)")
    a_row = next(l for l in lines if l.startswith("| a |"))
    assert a_row.count("(1.00x)") >= 5  # every figure of the reference is 1.00x
    b_row = next(l for l in lines if l.startswith("| b |"))
    ratio = rows[1]["params"] / rows[0]["params"]
    assert f"({ratio:.2f}x)" in b_row
    assert "CUDA" not in lines[0]  # no CUDA figures measured, no CUDA columns
    assert "| 20 / 5 |" in text  # RoIs / detections column of the per-part table


def test_main_writes_json_and_prints_table(tiny, tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = B.main(
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
    assert "| tiny |" in printed and "torch threads" in printed
    assert "WARNING" not in printed
    saved = json.loads(out.read_text())
    assert saved["configs"][0]["counts"] == {"proposals": [10], "detections": [3]}
    assert result["configs"][0]["params"] == saved["configs"][0]["params"]
    with pytest.raises(SystemExit):
        B.main([])


def test_coco_eval_timing_agrees():
    rows = B.time_coco_eval(num_images=6, dets_per_image=10, image_size=(96, 128), log=print)
    assert [r["iou_type"] for r in rows] == ["bbox", "segm"]
    for r in rows:
        assert r["pycocotools"] > 0
        if r["faster"] is not None:
            assert r["max_abs_diff"] < 1e-4
    assert "speed-up" in B.format_coco_eval_table(rows)


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


# --- CPU ablation (projects/cpu_ablation): cache and tables on fake results ----------------------


def _fake_result(ablation, root, config, seed, iters, ap):
    path = os.path.join(ablation.run_dir(root, config, seed, iters), "results.json")
    metrics = {"AP": ap, "APs": ap / 2, "APm": ap, "APl": ap * 2}
    ablation.write_json_atomic(path, {"bbox": metrics, "segm": dict(metrics, AP=ap - 1)})


def test_ablation_rows_have_configs():
    ablation = _load_ablation()
    for table, (_, lead, rows) in ablation.TABLES.items():
        for config, cells in rows:
            assert os.path.isfile(os.path.join(ablation.CONFIG_DIR, f"{config}.py")), config
            assert len(cells) == len(lead), (table, config)
    configs = ablation.configs_of(["2", "3"])
    assert configs[0] == "baseline" and len(configs) == len(set(configs)) == 11
    # every ablation config loads (instantiating them all is the ablation's job)
    for config in ablation.configs_of(sorted(ablation.TABLES)):
        cfg = LazyConfig.load(os.path.join(ablation.CONFIG_DIR, f"{config}.py"))
        assert cfg.model.roi_heads.num_classes == 5 and cfg.train.device == "cpu"


def test_ablation_cache_plan_and_table(tmp_path):
    ablation = _load_ablation()
    root = str(tmp_path)
    _fake_result(ablation, root, "baseline", 0, 50, 10.0)
    _fake_result(ablation, root, "baseline", 1, 50, 12.0)
    _fake_result(ablation, root, "safpn", 0, 50, 20.0)
    _fake_result(ablation, root, "safpn", 0, 99, 99.0)  # another length: not mixed in
    # an unfinished run (no results.json) and a corrupt one are both still to do
    os.makedirs(ablation.run_dir(root, "safpn", 1, 50))
    corrupt = os.path.join(ablation.run_dir(root, "ejhead", 0, 50), "results.json")
    os.makedirs(os.path.dirname(corrupt))
    with open(corrupt, "w") as f:
        f.write("{trunc")
    todo = ablation.plan_runs(root, ["baseline", "safpn", "ejhead"], [0, 1], 50)
    assert todo == [("ejhead", 0), ("safpn", 1), ("ejhead", 1)]
    assert not [n for n in os.listdir(os.path.dirname(corrupt)) if n.endswith(".tmp")]

    s = ablation.summarize(root, "baseline", [0, 1, 2], 50)
    assert s["n"] == 2
    assert s[("bbox", "AP")] == pytest.approx((11.0, math.sqrt(2.0)))
    assert s[("segm", "AP")][0] == pytest.approx(10.0)
    text = ablation.format_table("3", root, [0, 1, 2], 50)
    lines = text.splitlines()
    assert "box AP | AP_S | AP_M | AP_L | mask AP" in lines[2]
    base = next(l for l in lines if l.startswith("| TD-FPN |"))
    assert "11.0 ± 1.4" in base and "| 2/3 |" in base
    sa = next(l for l in lines if l.startswith("| SA-FPN"))
    assert "| 20.0 | 10.0 |" in sa and "| 1/3 |" in sa and "99" not in sa  # one seed: no ±
    bu = next(l for l in lines if l.startswith("| BU-FPN |"))
    assert "| - |" in bu and "| 0/3 |" in bu


def test_mean_std():
    ablation = _load_ablation()
    assert ablation.mean_std([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2.0)))
    assert ablation.mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in ablation.mean_std([float("nan"), None]))


def test_ablation_results_store(tmp_path):
    """Finished runs are copied to the committed store and found there without the run dirs."""
    ablation = _load_ablation()
    runs, store = str(tmp_path / "runs"), str(tmp_path / "store")
    _fake_result(ablation, runs, "baseline", 0, 50, 10.0)
    _fake_result(ablation, runs, "safpn", 0, 50, 20.0)
    assert ablation.publish_results(runs, store, ["baseline", "safpn"], [0, 1], 50) == 2
    assert ablation.publish_results(runs, store, ["baseline", "safpn"], [0, 1], 50) == 0
    path = ablation.result_path(store, "baseline", 0, 50)
    assert path.startswith(os.path.join(store, "baseline")) and path.endswith(
        os.path.join("0", "50.json")
    )
    shutil.rmtree(runs)  # a fresh clone: no run directories, only the store
    assert ablation.load_result(runs, "baseline", 0, 50) is None
    assert ablation.load_result(runs, "baseline", 0, 50, results_dir=store)["bbox"]["AP"] == 10.0
    assert ablation.plan_runs(runs, ["baseline", "safpn"], [0, 1], 50, results_dir=store) == [
        ("baseline", 1),
        ("safpn", 1),
    ]
    # a corrupt store entry is not a result; the run directory's copy is used instead
    with open(path, "w") as f:
        f.write("[1, 2")
    assert ablation.load_result(runs, "baseline", 0, 50, results_dir=store) is None
    _fake_result(ablation, runs, "baseline", 0, 50, 11.0)
    assert ablation.load_result(runs, "baseline", 0, 50, results_dir=store)["bbox"]["AP"] == 11.0
    table = ablation.format_table("3", runs, [0, 1], 50, results_dir=store)
    assert "| SA-FPN (TD-FPN concat BUF-FPN) | 20.0 |" in table


def test_ablation_sweep_runs_jobs_in_parallel(tmp_path, monkeypatch):
    """--jobs 2 keeps two trainings going, each told its thread share; results reach the table."""
    ablation = _load_ablation()
    runs, store = str(tmp_path / "runs"), str(tmp_path / "store")
    lock, state, calls = threading.Lock(), {"now": 0, "max": 0}, []

    def fake_call(cmd, stdout=None, stderr=None, env=None):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            calls.append((cmd, env))
        time.sleep(0.3)
        config, seed = cmd[cmd.index("--run-one") + 1 : cmd.index("--run-one") + 3]
        assert cmd[cmd.index("--results-dir") + 1] == store
        if config != "fpn_bu":  # one run "fails": reported, not in the table
            _fake_result(ablation, runs, config, int(seed), 7, 10.0 + int(seed))
        with lock:
            state["now"] -= 1
        return 0 if config != "fpn_bu" else 1

    monkeypatch.setattr(ablation.subprocess, "call", fake_call)
    monkeypatch.setattr(ablation.os, "cpu_count", lambda: 2)
    argv = ["--tables", "3", "--configs", "baseline", "fpn_bu", "--seeds", "0", "1"]
    argv += ["--iters", "7", "--output-dir", runs, "--results-dir", store, "--jobs", "2"]
    assert ablation.main(argv) == 0
    assert len(calls) == 4 and state["max"] == 2
    for cmd, env in calls:
        assert cmd[cmd.index("--threads") + 1] == "1" and env["OMP_NUM_THREADS"] == "1"
    # the table is built from the store alone once the run directories are gone
    ablation.publish_results(runs, store, ["baseline"], [0, 1], 7)
    shutil.rmtree(runs)
    text = ablation.format_table("3", runs, [0, 1], 7, results_dir=store)
    assert "| TD-FPN | 10.5 ± 0.7 |" in text
    bu = next(l for l in text.splitlines() if l.startswith("| BU-FPN |"))
    assert bu.split(" | ")[1:9] == ["-"] * 8 and "| 0/2 |" in bu


def test_ablation_seconds_per_iteration(tmp_path):
    """The s/iter column is the median of metrics.json's per-iteration times (junk lines skipped)."""
    ablation = _load_ablation()
    assert ablation.seconds_per_iteration(str(tmp_path)) is None  # no metrics.json
    lines = [{"iteration": 19, "time": 9.0}, {"iteration": 39, "time": 1.0}, "not json"]
    lines += [{"iteration": 59, "time": 2.0}, {"iteration": 79}, {"iteration": 99, "time": 3.0}]
    with open(tmp_path / "metrics.json", "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    assert ablation.seconds_per_iteration(str(tmp_path)) == pytest.approx(2.5)
    root = str(tmp_path / "runs")
    for seed, spi in [(0, 1.0), (1, 2.0)]:
        path = os.path.join(ablation.run_dir(root, "fpn_buf", seed, 5), "results.json")
        ablation.write_json_atomic(path, {"bbox": {"AP": 1.0}, "segm": {}, "sec_per_iter": spi})
    row = next(
        l for l in ablation.format_table("3", root, [0, 1], 5).splitlines() if "BUF-FPN |" in l
    )
    assert "| 1.50 | 2/2 |" in row


def test_benchmark_spec_override_typo_is_an_error():
    """A misspelled override in a --configs spec is refused (not a silently added key)."""
    with pytest.raises(KeyError, match=r"Did you mean 'model\.roi_heads\.interleave'"):
        B.build_model_from_spec(
            "common/models/mask_rcnn_safpn_ejhead.py, model.roi_heads.interleav=0"
        )


def test_ablation_markdown_between_markers(tmp_path):
    """--markdown replaces only the text between the markers (README.md); other files whole."""
    ablation = _load_ablation()
    runs = str(tmp_path / "runs")
    _fake_result(ablation, runs, "baseline", 0, 5, 3.0)
    text = ablation.format_tables(["5"], runs, [0, 1], 5)
    assert text.startswith("_1 of 10 runs finished (5 configs x 2 seeds, 5 iterations each)._")
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# Title\nbefore\n{ablation.TABLES_START}\nold table\n{ablation.TABLES_END}\nafter\n"
    )
    ablation.write_markdown(str(readme), text)
    new = readme.read_text()
    assert new.startswith("# Title\nbefore\n" + ablation.TABLES_START + "\n_1 of 10")
    assert new.endswith(ablation.TABLES_END + "\nafter\n") and "old table" not in new
    ablation.write_markdown(str(readme), "second")  # idempotent: replaces again
    assert (
        readme.read_text().count(ablation.TABLES_START) == 1
        and "_1 of 10" not in readme.read_text()
    )
    plain = tmp_path / "tables.md"
    plain.write_text("anything")
    ablation.write_markdown(str(plain), text)
    assert plain.read_text() == text + "\n"


def test_ablation_markdown_links_are_relative_to_the_file(tmp_path, monkeypatch):
    """--markdown README.md docs/ablation.md: config links resolve from each file's folder."""
    ablation = _load_ablation()
    runs = str(tmp_path / "runs")
    _fake_result(ablation, runs, "baseline", 0, 5, 3.0)
    monkeypatch.setattr(ablation, "REPO_ROOT", str(tmp_path))
    (tmp_path / "docs").mkdir()
    readme, doc = tmp_path / "README.md", tmp_path / "docs" / "ablation.md"
    argv = ["--table-only", "--tables", "5", "--seeds", "0", "--iters", "5"]
    argv += ["--output-dir", runs, "--results-dir", "", "--markdown", str(readme), str(doc)]
    assert ablation.main(argv) == 0
    assert "[baseline](projects/cpu_ablation/configs/baseline.py)" in readme.read_text()
    assert "[baseline](../projects/cpu_ablation/configs/baseline.py)" in doc.read_text()
