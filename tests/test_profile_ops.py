"""The per-op profile of the measurement lab (``tools/benchmark.py --profile``,
projects/lab/sa_ejhead_lab/profile.py): end to end on a tiny config, and the marking on a
constructed case.
"""

import json

import pytest
import torch

from _helpers import run_tool_script, write_tiny_lazy_config_file
from sa_ejhead.modeling import ThreadedROIAlign
from sa_ejhead_lab import profile, report


@pytest.mark.slow
def test_profile_two_tiny_configs(tmp_path, capsys, monkeypatch):
    config = str(tmp_path / "tiny_mask_rcnn.py")
    write_tiny_lazy_config_file(config, train_dataset="-", test_dataset="-", output_dir="")
    out = tmp_path / "profile.json"
    argv = ["--profile", "--no-isolate", "--configs", f"a={config}"]
    argv += [f"b={config},model.roi_heads.box_head.fc_dims=[64,64,64]"]
    argv += ["--input-size", "64x96", "--proposals", "12", "--detections", "3"]
    argv += ["--train-size", "64x64", "--runs", "1", "--train-steps", "1", "--warmup", "0"]
    assert run_tool_script("benchmark.py", argv + ["--output", str(out)], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "WARNING" not in printed  # the ROI heads saw the requested RoI counts
    for title in ("Inference forward", "Training step"):
        block = printed.split(title, 1)[1]
        header = next(line for line in block.splitlines() if line.startswith("| op"))
        cells = [c.strip() for c in header.strip("|").split("|")]
        assert cells == ["op", "a (ms)", "b (ms)", "b - a (ms)", "(% of a total)", "> 2 %"]
        assert "| **total (ops' self CPU)** " in block and "| wall time (profiled) " in block
        assert "Marked ops:" in block
    saved = json.loads(out.read_text())
    assert saved["options"]["profile_threshold"] == 0.02
    for row in saved["configs"]:
        assert row["counts"] == {"proposals": [12], "detections": [3]}
        for kind in ("infer", "train"):
            prof = row[f"profile_{kind}"]
            assert prof["runs"] == 1 and prof["wall_ms"] > 0
            assert prof["total_ms"] == pytest.approx(
                sum(op["self_cpu_ms"] for op in prof["ops"].values())
            )
        # convolutions and the RoIAlign forward are there; the backward in training only
        assert any("conv" in name for name in row["profile_infer"]["ops"])
        assert "torchvision::roi_align" in row["profile_infer"]["ops"]
        assert "torchvision::_roi_align_backward" in row["profile_train"]["ops"]
        assert "torchvision::_roi_align_backward" not in row["profile_infer"]["ops"]
    # a third box fc: one more addmm per inference forward
    calls = [r["profile_infer"]["ops"]["aten::addmm"]["calls"] for r in saved["configs"]]
    assert calls[1] == calls[0] + 1


def _profile(ops, wall=None):
    total = sum(ops.values())
    return {
        "runs": 2,
        "wall_ms": total + 5.0 if wall is None else wall,
        "total_ms": total,
        "ops": {name: {"self_cpu_ms": ms, "calls": 1.0} for name, ms in ops.items()},
    }


def test_marking_on_a_constructed_case():
    # reference total 100 ms: the threshold is 2 ms
    ref = _profile({"conv": 60.0, "roi_align": 20.0, "avg_pool": 10.0, "nms": 6.0, "add": 4.0})
    other = _profile({"conv": 61.5, "roi_align": 23.0, "nms": 8.0, "add": 4.0, "new_op": 2.5})
    third = _profile({"conv": 57.9, "roi_align": 20.0, "avg_pool": 10.0, "nms": 6.0, "add": 4.0})
    comparison = profile.compare_ops([ref, other, third], threshold=0.02)
    assert comparison["threshold_ms"] == pytest.approx(2.0)
    by_op = {e["op"]: e for e in comparison["ops"]}
    # +3 ms, -10 ms (gone), +2.5 ms (new) in "other"; -2.1 ms in "third"
    marked = {op for op, e in by_op.items() if e["marked"]}
    assert marked == {"roi_align", "avg_pool", "new_op", "conv"}
    # conv: +1.5 (other) and -2.1 (third, marked); nms +2.0 exactly: not more than 2 %
    assert not by_op["nms"]["marked"] and by_op["nms"]["diff_ms"] == [0.0, 2.0, 0.0]
    comparison_third = profile.compare_ops([ref, third], threshold=0.02)
    assert [e["op"] for e in comparison_third["ops"] if e["marked"]] == ["conv"]
    assert by_op["avg_pool"]["ms"] == [10.0, 0.0, 10.0]
    assert by_op["roi_align"]["diff_pct"][1] == pytest.approx(3.0)
    assert comparison["ops"][0]["op"] == "avg_pool"  # largest difference first
    totals = comparison["totals"]["total_ms"]
    assert totals["ms"] == [100.0, 99.0, 97.9] and totals["diff_ms"][1] == pytest.approx(-1.0)

    text = report.format_profile_table(["A", "B", "C"], comparison, 0.02, top=2)
    lines = {line.split("|")[1].strip(): line for line in text.splitlines()[2:]}
    assert "**> 2 %**" in lines["`roi_align`"] and "**> 2 %**" in lines["`new_op`"]
    assert "**> 2 %**" in lines["`conv`"]  # marked through C
    assert "**> 2 %**" not in lines["other ops (2)"]
    # top=2 lists the marked ops and the two slowest; nms and add are summed
    assert "`nms`" not in lines and "`add`" not in lines
    assert "| 10.0 " in lines["other ops (2)"] and "+2.0" in lines["other ops (2)"]
    total = [c.strip() for c in lines["**total (ops' self CPU)**"].strip("|").split("|")]
    assert total[1:4] == ["100.0", "99.0", "97.9"] and total[4:6] == ["-1.0", "-1.0"]

    rows = [
        {"label": "A", "profile_infer": ref},
        {"label": "B", "profile_infer": other},
    ]
    text = report.format_profile_tables(rows)
    assert text.startswith("Inference forward") and "Training step" not in text
    assert "Marked ops: `avg_pool`, `roi_align`, `new_op`." in text


def test_threaded_roi_align_is_in_the_profile():
    """The worker threads' RoIAlign is invisible to torch.profiler; the calling thread's span
    is recorded under its own name."""
    level = ThreadedROIAlign((7, 7), 1.0, 2, True, min_rois_per_thread=1)
    x = torch.randn(1, 4, 32, 32)
    rois = torch.tensor([[0.0, 1.0, 2.0, 20.0, 25.0]] * 8)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            result = profile.profile_calls(lambda: level(x, rois), runs=2, warmup=0)
    finally:
        torch.set_num_threads(previous)
    assert result["ops"]["sa_ejhead::threaded_roi_align"]["calls"] == 1.0
    assert result["ops"]["sa_ejhead::threaded_roi_align"]["self_cpu_ms"] > 0
