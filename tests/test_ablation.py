"""The CPU ablation's runner, results store, tables and verdicts (projects/cpu_ablation)."""

import importlib.util
import io
import json
import math
import os
import shutil
import sys
import threading

import pytest
import torch

from detectron2.config import LazyConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATION = os.path.join(REPO, "projects", "cpu_ablation")


def _load_runner():
    spec = importlib.util.spec_from_file_location(
        "run_ablation", os.path.join(ABLATION, "run_ablation.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts projects/cpu_ablation on sys.path
    return module


R = _load_runner()
from ablation import protocols as P  # noqa: E402
from ablation import store as S  # noqa: E402
from ablation import tables as T  # noqa: E402


def _store(tmp_path, configs=("baseline", "safpn", "ejhead", "fpn_bu", "fpn_buf"), pin=True):
    """A v2 store in tmp_path whose configs are pinned to fake hashes (no config is loaded)."""
    results = tmp_path / "store"
    results.mkdir(exist_ok=True)
    if pin:
        (results / S.PINNED).write_text(json.dumps({c: f"h{c}" for c in configs}))
    return S.ResultStore(
        P.PROTOCOLS["v2"].path("projects/cpu_ablation/configs_v2"),
        str(tmp_path / "runs"),
        str(results),
    )


def _fake(store, config, seed, iters, ap, spi=None):
    metrics = {"AP": ap, "APs": ap / 2, "APm": ap, "APl": ap * 2, "AP75": ap - 2}
    path = os.path.join(store.run_dir(config, seed, iters), "results.json")
    S.write_json_atomic(
        path, {"bbox": metrics, "segm": dict(metrics, AP=ap - 1), "sec_per_iter": spi}
    )


@pytest.fixture(scope="module")
def v2_configs():
    """config name -> the loaded LazyConfig of every v2 row (loaded once: about 0.3 s each)."""
    v2 = P.PROTOCOLS["v2"]
    return {
        config: LazyConfig.load(v2.path(os.path.join(v2.config_dir, f"{config}.py")))
        for config in T.configs_of(v2, sorted(v2.tables))
    }


@pytest.mark.slow
def test_every_row_has_a_config_that_loads(v2_configs):
    for protocol in P.PROTOCOLS.values():
        for table, (_, lead, rows, metrics) in protocol.tables.items():
            for config, cells in rows:
                path = protocol.path(os.path.join(protocol.config_dir, f"{config}.py"))
                assert os.path.isfile(path), (protocol.name, config)
                assert len(cells) == len(lead), (protocol.name, table, config)
        for _, _, better, worse, _ in protocol.claims:
            assert better in T.configs_of(protocol, protocol.tables) and worse != better
    for config, cfg in v2_configs.items():
        assert cfg.model.roi_heads.num_classes == 5 and cfg.train.device == "cpu"
        # every v2 row starts from the committed pre-trained backbone, with FrozenBN
        assert cfg.train.init_checkpoint.startswith("sa_ejhead://pretrained/"), config
        assert cfg.model.backbone.bottom_up.stages[0].norm == "FrozenBN"
        roi = cfg.model.roi_heads
        assert roi.box_pooler.canonical_box_size == roi.mask_pooler.canonical_box_size == 224
        if "interleave_max_positives" in roi:  # equal positive caps
            assert roi.interleave_max_positives == roi.batch_size_per_image * roi.positive_fraction


@pytest.mark.slow
def test_v2_enriched_rows_scale_fc1_and_the_others_do_not(v2_configs):
    for config, cfg in v2_configs.items():
        roi = cfg.model.roi_heads
        flattens_14 = (
            roi.box_pooler.output_size == 14 and not roi.get("box_refinement_downsample", 1) > 1
        )
        factor = cfg.optimizer.params.get("lr_factor_func")
        fc1 = (
            "roi_heads.box_head.0.fc1.weight"
            if "box_heads" in roi
            else "roi_heads.box_head.fc1.weight"
        )
        if config.startswith("diag_"):
            continue
        if flattens_14:
            assert factor is not None and factor(fc1) == 0.25, config
            assert factor(fc1.replace("fc1", "fc2")) == 1.0
        else:
            assert factor is None, config


def test_plan_summary_and_table(tmp_path):
    store = _store(tmp_path)
    _fake(store, "baseline", 0, 50, 10.0)
    _fake(store, "baseline", 1, 50, 12.0)
    _fake(store, "safpn", 0, 50, 20.0)
    _fake(store, "safpn", 0, 99, 99.0)  # another length: not mixed in
    os.makedirs(store.run_dir("safpn", 1, 50))  # unfinished
    corrupt = os.path.join(store.run_dir("ejhead", 0, 50), "results.json")
    os.makedirs(os.path.dirname(corrupt))
    with open(corrupt, "w") as f:
        f.write("{trunc")
    store.pinned = {}  # pins mean "finished": plan as if unpinned, with the same hashes
    store.hash = lambda config: f"h{config}"
    assert store.plan(["baseline", "safpn", "ejhead"], [0, 1], 50) == [
        ("ejhead", 0),
        ("safpn", 1),
        ("ejhead", 1),
    ]
    s = T.summarize(store, "baseline", [0, 1, 2], 50)
    assert s["n"] == 2 and s[("bbox", "AP")] == pytest.approx((11.0, math.sqrt(2.0)))
    text = T.format_table(P.PROTOCOLS["v2"], store, "3", [0, 1, 2], 50)
    lines = text.splitlines()
    assert "box AP | AP_S | AP_M | AP_L | mask AP" in lines[2]
    base = next(line for line in lines if line.startswith("| TD-FPN |"))
    assert "11.0 ± 1.4" in base and "| 2/3 |" in base and "configs_v2/baseline.py" in base
    sa = next(line for line in lines if line.startswith("| SA-FPN"))
    assert "| 20.0 | 10.0 |" in sa and "| 1/3 |" in sa and "99" not in sa  # one seed: no ±
    bu = next(line for line in lines if line.startswith("| BU-FPN |"))
    assert "| - |" in bu and "| 0/3 |" in bu


def test_mean_std_uses_the_sample_deviation():
    assert T.mean_std([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2.0)))
    assert T.mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in T.mean_std([float("nan"), None]))


def test_results_store_survives_a_fresh_clone(tmp_path):
    store = _store(tmp_path)
    _fake(store, "baseline", 0, 50, 10.0)
    _fake(store, "safpn", 0, 50, 20.0)
    assert store.publish(["baseline", "safpn"], [0, 1], 50) == 2
    assert store.publish(["baseline", "safpn"], [0, 1], 50) == 0
    path = store.result_path("baseline", 0, 50)
    assert path.endswith(os.path.join("store", "baseline", "hbaseline", "0", "50.json"))
    shutil.rmtree(store.output_dir)  # a fresh clone: no run directories, only the store
    assert store.load("baseline", 0, 50)["bbox"]["AP"] == 10.0
    with open(path, "w") as f:  # a corrupt store entry is not a result
        f.write("[1, 2")
    assert store.load("baseline", 0, 50) is None


def test_pinned_hashes_keep_results_readable_after_the_configs_change(tmp_path):
    """v1's rows inherit from the demo configs: once pinned, a change there does not orphan
    their results, and no pinned row is run again."""
    store = _store(tmp_path, pin=False)
    calls = []
    store_hash = S.config_hash

    def fake_hash(config_file, opts=()):
        calls.append(config_file)
        return "old" if not fake_hash.changed else "new"

    fake_hash.changed = False
    S.config_hash = fake_hash
    try:
        _fake(store, "baseline", 0, 5, 7.0)
        store.publish(["baseline"], [0], 5)
        assert store.pin(["baseline", "safpn"]) == {"baseline": "old"}  # safpn has no result
        fake_hash.changed = True
        reopened = S.ResultStore(store.config_dir, store.output_dir, store.results_dir)
        assert reopened.hash("baseline") == "old" and reopened.hash("safpn") == "new"
        assert reopened.load("baseline", 0, 5)["bbox"]["AP"] == 7.0
        assert reopened.plan(["baseline", "safpn"], [0, 1], 5) == [("safpn", 0), ("safpn", 1)]
        # overrides make another key: pins do not apply to them
        with_opts = S.ResultStore(store.config_dir, store.output_dir, store.results_dir, ["a=1"])
        assert with_opts.hash("baseline") == "new"
    finally:
        S.config_hash = store_hash


def test_aliases_carry_runs_across_a_refactor_that_changes_the_config_text(tmp_path, monkeypatch):
    """A refactor that changes the resolved config but no number records new hash -> old hash:
    the runs made before it are read and not run again, for runs with overrides too; a hash
    that is not aliased starts afresh."""
    store = _store(tmp_path, pin=False)
    monkeypatch.setattr(S, "config_hash", lambda config_file, opts=(): "old")
    _fake(store, "baseline", 0, 5, 7.0)
    store.publish(["baseline"], [0], 5)
    monkeypatch.setattr(S, "config_hash", lambda config_file, opts=(): "new" + "".join(opts))
    aliases = {"baseline": {"new": "old", "newa=1": "old"}}
    (tmp_path / "store" / S.ALIASES).write_text(json.dumps(aliases))
    for opts in ([], ["a=1"]):
        reopened = S.ResultStore(store.config_dir, store.output_dir, store.results_dir, opts)
        assert reopened.hash("baseline") == "old"
        assert reopened.load("baseline", 0, 5)["bbox"]["AP"] == 7.0
        assert reopened.plan(["baseline"], [0], 5) == []
    other = S.ResultStore(store.config_dir, store.output_dir, store.results_dir, ["b=2"])
    assert other.hash("baseline") == "newb=2" and other.plan(["baseline"], [0], 5) == [
        ("baseline", 0)
    ]


def test_sweep_keeps_jobs_running_in_parallel(tmp_path, monkeypatch):
    """--jobs 2 runs two trainings at once (a barrier that both must reach), each told its
    share of the cores; a failed run is reported and left out of the table."""
    runs, results = str(tmp_path / "runs"), str(tmp_path / "store")
    os.makedirs(results)
    with open(os.path.join(results, S.PINNED), "w") as f:
        json.dump({}, f)
    barrier, lock, calls = threading.Barrier(2, timeout=30), threading.Lock(), []
    monkeypatch.setattr(S, "config_hash", lambda config_file, opts=(): "h")

    def fake_call(cmd, stdout=None, stderr=None, env=None):
        with lock:
            calls.append((cmd, env))
        barrier.wait()  # raises BrokenBarrierError unless two runs are in flight together
        config, seed = cmd[cmd.index("--run-one") + 1 : cmd.index("--run-one") + 3]
        assert cmd[cmd.index("--results-dir") + 1] == results
        if config == "fpn_bu":  # this run "fails": reported, not in the table
            return 1
        store = S.ResultStore(os.path.join(ABLATION, "configs_v2"), runs, results)
        _fake(store, config, int(seed), 7, 10.0 + int(seed))
        return 0

    monkeypatch.setattr(R.subprocess, "call", fake_call)
    monkeypatch.setattr(R, "available_cores", lambda: 2)
    argv = ["--tables", "3", "--configs", "baseline", "fpn_bu", "--seeds", "0", "1"]
    argv += ["--iters", "7", "--output-dir", runs, "--results-dir", results, "--jobs", "2"]
    assert R.main(argv) == 0
    assert len(calls) == 4
    for cmd, env in calls:
        assert cmd[cmd.index("--threads") + 1] == "1" and env["OMP_NUM_THREADS"] == "1"
        assert cmd[cmd.index("--protocol") + 1] == "v2"
    store = S.ResultStore(os.path.join(ABLATION, "configs_v2"), runs, results)
    store.publish(["baseline"], [0, 1], 7)
    shutil.rmtree(runs)
    text = T.format_table(P.PROTOCOLS["v2"], store, "3", [0, 1], 7)
    assert "| TD-FPN | 10.5 ± 0.7 |" in text
    bu = next(line for line in text.splitlines() if line.startswith("| BU-FPN |"))
    assert bu.split(" | ")[1:9] == ["-"] * 8 and "| 0/2 |" in bu


def test_seconds_per_iteration_and_the_evaluation_curve(tmp_path):
    assert (
        S.seconds_per_iteration(str(tmp_path)) is None and S.evaluation_curve(str(tmp_path)) == []
    )
    lines = [{"iteration": 19, "time": 9.0}, {"iteration": 39, "time": 1.0}, "not json"]
    lines += [{"iteration": 59, "time": 2.0}, {"iteration": 79}, {"iteration": 99, "time": 3.0}]
    lines += [{"iteration": 99, "bbox/AP": 12.5, "segm/AP": 10.0}]
    with open(tmp_path / "metrics.json", "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    assert S.seconds_per_iteration(str(tmp_path)) == pytest.approx(2.5)
    assert S.evaluation_curve(str(tmp_path)) == [{"iter": 99, "bbox_AP": 12.5, "segm_AP": 10.0}]


@pytest.mark.slow
def test_verdicts_use_two_standard_errors(tmp_path):
    store = _store(tmp_path)
    for seed, (base, sa, bu) in enumerate(
        [(10.0, 14.0, 9.0), (11.0, 15.0, 12.0), (12.0, 16.0, 6.0)]
    ):
        _fake(store, "baseline", seed, 5, base)
        _fake(store, "safpn", seed, 5, sa)
        _fake(store, "fpn_bu", seed, 5, bu)
    _fake(store, "fpn_buf", 0, 5, 30.0)  # under 3 seeds: no verdict
    _fake(store, "fpn_buf", 1, 5, 31.0)
    c = T.compare(store, "safpn", "baseline", "bbox", "AP", [0, 1, 2], 5)
    assert c["verdict"] == "confirms" and c["diff"] == pytest.approx(4.0)
    assert c["se"] == pytest.approx(math.sqrt(1 / 3 + 1 / 3))
    assert (
        T.compare(store, "baseline", "safpn", "bbox", "AP", [0, 1, 2], 5)["verdict"]
        == "contradicts"
    )
    assert (
        T.compare(store, "baseline", "fpn_bu", "bbox", "AP", [0, 1, 2], 5)["verdict"]
        == "cannot tell"
    )
    assert (
        T.compare(store, "fpn_buf", "fpn_bu", "bbox", "AP", [0, 1, 2], 5)["verdict"]
        == "under 3 seeds"
    )
    text = T.verdicts(P.PROTOCOLS["v2"], store, [0, 1, 2], 5)
    row = next(line for line in text.splitlines() if "| SA-FPN improves Mask R-CNN |" in line)
    assert "| box AP | +4.0 ± 0.8 | confirms |" in row
    only_3 = T.verdicts(P.PROTOCOLS["v2"], store, [0, 1, 2], 5, tables=["3"])
    claims = [line.split("|")[1].strip() for line in only_3.splitlines()[4:]]
    assert claims and set(claims) == {"3"}

    # --configs limits the claims to those between the given configs, and the rows and the count
    pair = T.verdicts(P.PROTOCOLS["v2"], store, [0, 1, 2], 5, configs=["safpn", "baseline"])
    rows = [line.split("|")[3].strip() for line in pair.splitlines()[4:]]
    assert rows and set(rows) == {"safpn vs baseline"}
    text = T.format_tables(P.PROTOCOLS["v2"], store, ["2"], [0, 1, 2], 5, configs=["safpn"])
    assert text.startswith("_3 of 3 runs finished (1 config x 3 seeds")
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| Mask")] == [
        "| Mask R-CNN + SA-FPN"
    ]


def test_markdown_between_markers_and_links_relative_to_the_file(tmp_path, monkeypatch):
    doc = tmp_path / "ablation.md"
    doc.write_text("# Title\n<!-- m:start -->\nold\n<!-- m:end -->\nafter\n")
    T.write_markdown(str(doc), "new table", "m")
    assert doc.read_text() == "# Title\n<!-- m:start -->\nnew table\n<!-- m:end -->\nafter\n"
    T.write_markdown(str(doc), "other", "n")  # no such markers: appended with them
    assert doc.read_text().endswith("after\n<!-- n:start -->\nother\n<!-- n:end -->\n")

    runs = str(tmp_path / "runs")
    monkeypatch.setattr(R, "REPO_ROOT", str(tmp_path))
    monkeypatch.setattr(S, "config_hash", lambda config_file, opts=(): "h")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "ablation.md"
    argv = ["--table-only", "--tables", "5", "--seeds", "0", "--iters", "5"]
    argv += ["--output-dir", runs, "--results-dir", "", "--markdown", str(page)]
    assert R.main(argv) == 0
    text = page.read_text()
    assert "[baseline](../projects/cpu_ablation/configs_v2/baseline.py)" in text
    assert "<!-- cpu-ablation-v2-tables:start -->" in text
    assert "<!-- cpu-ablation-v2-tables-verdicts:start -->" in text


def test_markdown_is_written_even_if_stdout_is_closed(tmp_path, monkeypatch):
    """`run_ablation.py --table-only --markdown F | head` must still update F: the files are
    written before the tables are printed."""

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

    monkeypatch.setattr(R, "REPO_ROOT", str(tmp_path))
    monkeypatch.setattr(S, "config_hash", lambda config_file, opts=(): "h")
    page = tmp_path / "ablation.md"
    argv = ["--table-only", "--tables", "5", "--seeds", "0", "--iters", "5"]
    argv += ["--output-dir", str(tmp_path / "runs"), "--results-dir", "", "--markdown", str(page)]
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    with pytest.raises(BrokenPipeError):
        R.main(argv)
    text = page.read_text()
    assert "<!-- cpu-ablation-v2-tables:start -->" in text and "**Table 5." in text
    assert "<!-- cpu-ablation-v2-tables-verdicts:start -->" in text


def test_unknown_table_or_config_is_explained():
    with pytest.raises(SystemExit, match=r"Unknown table\(s\) \['9'\] for protocol v2"):
        R.main(["--tables", "9", "--table-only"])
    with pytest.raises(SystemExit, match="Unknown config 'nope'"):
        R.main(["--tables", "3", "--configs", "nope", "--table-only"])


def test_v1_tables_are_read_from_the_committed_store():
    """The finished v1 sweep stays readable: 57 runs from the pinned hashes."""
    protocol = P.PROTOCOLS["v1"]
    store = S.ResultStore(
        protocol.path(protocol.config_dir), "/nonexistent", protocol.path(protocol.results_dir)
    )
    text = T.format_tables(protocol, store, list(protocol.default_tables), [0, 1, 2], 615)
    assert text.startswith("_57 of 57 runs finished")
    base = next(
        line
        for line in text.splitlines()
        if line.startswith("| Mask R-CNN (Baseline) | ResNet18-FPN |")
    )
    assert "| 7.2 ± 0.2 |" in base


def test_cuda_runs_have_their_own_key_and_store(tmp_path, monkeypatch):
    """--device cuda: train.device=cuda joins the key (another hash, so never a CPU run's
    directory) and the results go to the store's _cuda folder (its own timing file); the CPU
    store is the committed one, keyed as before."""
    monkeypatch.setattr(S, "config_hash", _fake_hash)
    v3 = P.PROTOCOLS["v3"]
    cpu = R.make_store(R.get_parser().parse_args(["--protocol", "v3"]))
    cuda = R.make_store(R.get_parser().parse_args(["--protocol", "v3", "--device", "cuda"]))
    assert cpu.opts == ("optimizer.lr=0.04",) and cpu.results_dir == v3.path(v3.results_dir)
    assert cuda.opts == ("optimizer.lr=0.04", "train.device=cuda")
    assert cuda.results_dir == v3.path(v3.results_dir) + "_cuda"
    assert cuda.hash("baseline") != cpu.hash("baseline")
    assert cuda.run_dir("baseline", 0, 10) != cpu.run_dir("baseline", 0, 10)
    with pytest.raises(ValueError, match="device 'tpu'"):
        v3.store(device="tpu")
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        R.get_parser().parse_args(["--device", "tpu"])


@pytest.mark.slow
def test_a_real_run_stores_its_results_with_the_device_and_machine(tmp_path):
    """run_one trains a v3 row for real (2 iterations), evaluates it and stores the results with
    the run's device and machine, under the committed store's key (v3's baseline hash)."""
    store = P.PROTOCOLS["v3"].store(
        output_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "store")
    )
    # after 2 iterations every score is low: keep the 5 best detections of each image; no loader
    # workers to start and join (out of the key, as the protocols' run_overrides)
    predictor = "model.roi_heads.box_predictor"
    overrides = (f"{predictor}.test_score_thresh=0.0", f"{predictor}.test_topk_per_image=5")
    overrides += ("dataloader.train.num_workers=0", "dataloader.test.num_workers=0")
    R.run_one(store, "baseline", 0, 2, False, 100, threads=1, overrides=overrides)
    result = store.load("baseline", 0, 2)
    assert result["config_hash"] == "8a8cb13e87" and result["opts"] == ["optimizer.lr=0.04"]
    assert result["device"] == "cpu" and "logical CPUs" in result["machine"]
    assert result["torch_threads"] == 1 and result["wall_s"] > 0
    for task in ("bbox", "segm"):
        assert set(result[task]) >= {"AP", "APs", "APm", "APl"}


@pytest.mark.slow
def test_time_rows_times_real_trainings_in_turns(tmp_path):
    """time_rows.py builds each row's real v3 training, times them in turns and writes the
    timing file that the equal-cost lengths are read from."""
    spec = importlib.util.spec_from_file_location(
        "time_rows", os.path.join(ABLATION, "time_rows.py")
    )
    time_rows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(time_rows)
    out = tmp_path / "timing.json"
    argv = ["--rows", "baseline", "safpn_ejhead_efficient", "--burst", "1", "--turns", "2"]
    argv += ["--warmup", "0", "--output", str(out), "--opts", "dataloader.train.num_workers=0"]
    assert time_rows.main(argv) == 0
    timing = json.loads(out.read_text())
    assert set(timing["rows"]) == {"baseline", "safpn_ejhead_efficient"}
    for row in timing["rows"].values():
        assert row["sec_per_iter"] > 0 and len(row["turns_s"]) == 2
    assert timing["ratios"]["baseline"] == 1.0 and timing["ratios"]["safpn_ejhead_efficient"] > 0
    assert "logical CPUs" in timing["machine"] and timing["threads"] == 1
    assert timing["opts"] == ["optimizer.lr=0.04", "dataloader.train.num_workers=0"]
    efficient = round(P.V3_ITERS * timing["ratios"]["safpn_ejhead_efficient"])
    assert V3.equal_cost_iters(timing) == {"safpn_ejhead_efficient": efficient}


def test_run_one_skips_finished_and_locked_runs(tmp_path, monkeypatch):
    """Two sweeps sharing a store never train the same run twice at once."""
    store = _store(tmp_path)
    trained = []
    monkeypatch.setattr(R, "_train", lambda *a: trained.append(a[1]))
    _fake(store, "baseline", 0, 5, 1.0)
    R.run_one(store, "baseline", 0, 5, resume=True, checkpoint_period=10)
    assert trained == []  # finished
    lock = os.path.join(store.run_dir("safpn", 0, 5), "run.lock")
    os.makedirs(os.path.dirname(lock))
    with open(lock, "w") as f:
        f.write(str(os.getpid()))  # a live process holds it
    R.run_one(store, "safpn", 0, 5, resume=True, checkpoint_period=10)
    assert trained == []
    with open(lock, "w") as f:
        f.write("999999999")  # stale: no such process
    R.run_one(store, "safpn", 0, 5, resume=True, checkpoint_period=10)
    assert trained == ["safpn"] and not os.path.exists(lock)


# --- protocol v3 (issue 29) -----------------------------------------------------------------------
from ablation import v3 as V3  # noqa: E402


def _fake_hash(config_file, opts=()):
    """A config hash without loading the config: the overrides make the key, as in the real one."""
    return "h" + "-".join(opts)


def _v3_store(tmp_path, lr=P.V3_LR):
    """A store with v3's layout in tmp_path (the real configs' names; hashes from _fake_hash)."""
    results = tmp_path / "store"
    results.mkdir(exist_ok=True)
    return S.ResultStore(
        P.PROTOCOLS["v3"].path(P.PROTOCOLS["v3"].config_dir),
        str(tmp_path / "runs"),
        str(results),
        P.lr_opts(lr),
    )


def _pilot(aps):
    """``result(config, lr, iters)`` from ``{(lr, iters): box AP}`` (the baseline; mask = box - 5)."""

    def result(config, lr, iters):
        ap = aps.get((lr, iters)) if config == "baseline" else None
        return None if ap is None else {"bbox": {"AP": ap}, "segm": {"AP": ap - 5}}

    return result


def test_pilot_rule_chooses_where_doubling_moves_box_ap_under_a_point():
    ladder = {(0.02, 1200): 52.7, (0.02, 2400): 57.0, (0.04, 1200): 53.7, (0.04, 2400): 58.7}
    # 2400 -> 4800 moves the baseline by 0.6 < 1: v3's (0.04, 2400) is chosen
    d = V3.pilot_decision(_pilot({**ladder, (0.04, 4800): 59.3}), chosen=(0.04, 2400))
    assert d["status"] == "chosen" and (d["rate"], d["length"]) == (0.04, 2400)
    assert d["compared_at"] == 2400 and [s[:2] for s in d["steps"]] == [(1200, 2400), (2400, 4800)]
    assert d["steps"][0][2] == pytest.approx(5.0) and d["steps"][1][2] == pytest.approx(0.6)
    # the deciding run has not finished: pending, and it says which run it waits for
    d = V3.pilot_decision(_pilot(ladder), chosen=(0.04, 2400))
    assert d["status"] == "pending" and d["length"] is None and d["needs"] == [(0.04, 4800)]
    assert not d["rejects_chosen"]
    # doubling moves it by a point or more (either way): pending on the next doubling, and
    # v3's pair is ruled out
    for later in (60.0, 57.7):
        d = V3.pilot_decision(_pilot({**ladder, (0.04, 4800): later}), chosen=(0.04, 2400))
        assert d["status"] == "pending" and d["needs"] == [(0.04, 9600)] and d["rejects_chosen"]
    # converged earlier than the protocol's pair: the rule gives another pair
    early = {**ladder, (0.02, 2400): 53.0, (0.04, 2400): 54.0}
    d = V3.pilot_decision(_pilot(early), chosen=(0.04, 2400))
    assert d["status"] == "differs" and (d["rate"], d["length"]) == (0.04, 1200)
    # the rate: higher box + mask AP at the longest length both rates finished
    d = V3.pilot_decision(_pilot({**ladder, (0.02, 2400): 59.0}), chosen=(0.04, 2400))
    assert d["rate"] == 0.02 and d["needs"] == [(0.02, 4800)] and d["rejects_chosen"]
    assert V3.pilot_decision(_pilot({(0.04, 1200): 50.0}))["rate"] is None


def test_pilot_table_from_the_stored_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "config_hash", _fake_hash)
    for lr, iters, ap in [(0.02, 1200, 52.7), (0.02, 2400, 57.0), (0.04, 1200, 53.7)]:
        _fake(_v3_store(tmp_path, lr), "baseline", 0, iters, ap)
    store = _v3_store(tmp_path)
    _fake(store, "baseline", 0, 2400, 58.7)
    _fake(store, "baseline", 1, 4800, 99.0)  # not the pilot's seed: not read
    _fake(store, "safpn_ejhead", 0, 1200, 55.6)
    text = V3.pilot_markdown(store, chosen=(0.04, 2400))
    base = next(line for line in text.splitlines() if line.startswith("| `baseline`"))
    # columns: lr 0.02 then lr 0.04, each at the lengths a pilot row finished or the rule waits for
    # (lr 0.04 at 4800: pending on it)
    assert text.splitlines()[2] == (
        "| row | lr 0.02, 1200 it | lr 0.02, 2400 it | lr 0.04, 1200 it | lr 0.04, 2400 it "
        "| lr 0.04, 4800 it |"
    )
    assert base.split(" | ")[1:] == [
        "52.7 / 51.7",
        "57.0 / 56.0",
        "53.7 / 52.7",
        "**58.7 / 57.7**",
        "- |",
    ]
    assert "| `safpn_ejhead` | - | - | 55.6 / 54.6 | - | - |" in text
    # the difference row: where both rows finished, SA-FPN + EJ-Head minus the baseline
    assert "| `safpn_ejhead` - `baseline` (one seed) | - | - | +1.9 / +1.9 | - | - |" in text
    assert "**Status: pending**" in text and "lr 0.04 for 4800 iterations" in text
    _fake(store, "baseline", 0, 4800, 59.2)
    assert "**Status: chosen.** v3 = lr 0.04, 2400 iterations" in V3.pilot_markdown(
        store, chosen=(0.04, 2400)
    )
    text = V3.pilot_markdown(store, chosen=(0.04, 1200))  # doubling 1200 moved it by 5
    assert "**Status: the rule gives lr 0.04, 2400 iterations, not v3's" in text
    # a doubling past the pilot's lengths (9600 -> 19200) gets its own column
    for iters, ap in [(4800, 61.4), (9600, 63.1), (19200, 63.6)]:
        _fake(store, "baseline", 0, iters, ap)
    text = V3.pilot_markdown(store, chosen=(0.04, 9600))
    assert text.splitlines()[2].endswith("| lr 0.04, 9600 it | lr 0.04, 19200 it |")
    assert "9600 -> 19200 iterations: box AP +0.5 (converged)" in text
    assert "**Status: chosen.** v3 = lr 0.04, 9600 iterations" in text


def _timing(results_dir, ratios, hashes=None):
    rows = {
        config: {
            "sec_per_iter": 0.4 * ratio,
            "ratio": {"median": ratio, "min": ratio - 0.1, "max": ratio + 0.1},
            "config_hash": (hashes or {}).get(config),
        }
        for config, ratio in ratios.items()
    }
    data = {"date": "2026-12-07", "machine": "Test CPU.", "threads": 1, "rows": rows}
    data["ratios"] = dict(ratios)
    with open(os.path.join(results_dir, V3.TIMING_FILE), "w") as f:
        json.dump(data, f)
    return V3.read_timing(results_dir)


def test_equal_cost_lengths_come_from_the_committed_ratio_file(tmp_path):
    ratios = {"baseline": 1.0, "safpn_ejhead": 1.9, "safpn_ejhead_efficient": 1.15}
    timing = _timing(str(tmp_path), ratios)
    assert V3.equal_cost_iters(timing, 2400) == {
        "safpn_ejhead": 4560,
        "safpn_ejhead_efficient": 2760,
    }
    assert V3.equal_cost_iters(timing, 1000)["safpn_ejhead_efficient"] == 1150
    assert V3.equal_cost_iters(None, 2400) == {} and V3.read_timing(str(tmp_path / "no")) is None
    claims = V3.equal_cost_claims(timing, 2400)
    assert [(c[2], c[3]) for c in claims] == [
        ("safpn_ejhead", "baseline@4560"),
        ("safpn_ejhead_efficient", "baseline@2760"),
    ]
    assert [c[3] for c in V3.equal_cost_claims(None, 2400)] == [None, None]

    # the sweep's order: the pilot's deciding run, Table 2 + efficient, equal cost, components
    configs = list(P.V3_MAIN + P.V3_COMPONENTS)
    runs = V3.plan_runs(configs, [0, 1, 2], 2400, timing)
    assert runs[0] == ("baseline", 0, 4800) and len(runs) == 1 + 30 + 6
    groups = [
        "pilot" if n == 4800 else "cost" if n != 2400 else "main" if c in P.V3_MAIN else "parts"
        for c, _, n in runs
    ]
    assert groups == ["pilot"] + ["main"] * 15 + ["cost"] * 6 + ["parts"] * 15
    assert runs[16:18] == [("baseline", 0, 4560), ("baseline", 0, 2760)]
    assert [s for c, s, _ in runs[1:16]] == [0] * 5 + [1] * 5 + [2] * 5  # seed-major
    assert not any(n not in (2400, 4800) for _, _, n in V3.plan_runs(configs, [0], 2400, None))
    assert V3.plan_runs(["fpn_buf"], [1], 2400, timing) == [("fpn_buf", 1, 2400)]


def test_v3_tables_and_verdicts_say_n_of_3_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "config_hash", _fake_hash)
    store = _v3_store(tmp_path)
    v3 = P.PROTOCOLS["v3"]
    for seed in range(3):
        _fake(store, "safpn_ejhead", seed, 50, 20.0 + seed)
        _fake(store, "baseline", seed, 50, 10.0 + seed)
    _fake(store, "safpn", 0, 50, 15.0)
    _fake(store, "baseline", 0, 95, 30.0)  # the equal-cost baseline: 1 of 3 seeds
    text = T.format_tables(v3, store, ["V3"], [0, 1, 2], 50)
    row = next(line for line in text.splitlines() if line.startswith("| Mask R-CNN + SA-FPN |"))
    assert "| 15.0 |" in row and "| 1/3 seeds |" in row
    assert "| 0/3 seeds |" in next(line for line in text.splitlines() if "| BUF-FPN |" in line)
    timing = _timing(str(tmp_path / "store"), {"baseline": 1.0, "safpn_ejhead": 1.9})
    claims = list(v3.claims) + V3.equal_cost_claims(timing, 50)
    text = T.verdicts(v3, store, [0, 1, 2], 50, claims=claims)
    lines = text.splitlines()
    ours = next(line for line in lines if "| safpn_ejhead vs baseline | box AP |" in line)
    assert ours.endswith("| +10.0 ± 0.8 | confirms |")
    sa = next(line for line in lines if "| safpn vs baseline | box AP |" in line)
    assert sa.endswith("| - | under 3 seeds (1/3 vs 3/3) |")
    eq = next(line for line in lines if "safpn_ejhead vs baseline (95 it) | box AP" in line)
    assert eq.endswith("| under 3 seeds (3/3 vs 1/3) |")
    eff = next(line for line in lines if "safpn_ejhead_efficient vs ? | box AP" in line)
    assert eff.endswith("| - | no time ratio yet |")
    block = V3.equal_cost_markdown(store, [0, 1, 2], 50, timing, "time it")
    assert "round(50 x 1.900) = 95 it" in block and "| 30.0 |" in block
    assert "| Mask R-CNN + SA-FPN + EJ-Head (Ours), equal iterations | 50 | +10.0 ± 0.8 |" in block
    assert "_Some rows were timed with another config" not in block
    stale = _timing(str(tmp_path / "store"), {"baseline": 1.0}, {"baseline": "old"})
    assert "(other config!)" in V3.equal_cost_markdown(store, [0, 1, 2], 50, stale, "time it")
    assert "not measured yet: `time it`" in V3.equal_cost_markdown(store, [0], 50, None, "time it")


def test_sweep_progress_counts_finished_runs_and_the_core_hours_left(tmp_path, monkeypatch):
    """Finished runs of the plan are counted; the others cost iterations x timed s/iter x threads,
    and runs of rows without a timing are counted apart."""
    monkeypatch.setattr(S, "config_hash", _fake_hash)
    store = _v3_store(tmp_path)
    timing = _timing(str(tmp_path / "store"), {"baseline": 1.0, "safpn_ejhead": 2.5})
    runs = [("baseline", 0, 3600), ("baseline", 1, 3600), ("safpn_ejhead", 0, 3600)]
    runs.append(("ej_refine", 0, 3600))
    _fake(store, "baseline", 0, 3600, 30.0)
    line = V3.sweep_progress(store, runs, timing)
    # 3600 x 0.4 s (baseline seed 1) + 3600 x 1.0 s (0.4 x 2.5): 1.4 core-hours
    assert line == (
        "**Sweep progress**: 1 of 4 runs finished; the 2 left of the timed rows take about "
        "1.4 core-hours at the timed s/iter; 1 left of rows not timed."
    )
    for config, seed, n in runs:
        _fake(store, config, seed, n, 30.0)
    assert V3.sweep_progress(store, runs, timing) == "**Sweep progress**: 4 of 4 runs finished."


def _frontier_store(tmp_path):
    """A v3 store with baseline and safpn_ejhead at 50 (2 seeds) and 100 iterations (1 seed)."""
    store = _v3_store(tmp_path)
    for seed in range(2):
        _fake(store, "baseline", seed, 50, 10.0 + 2 * seed, spi=0.5)
        _fake(store, "safpn_ejhead", seed, 50, 20.0, spi=1.0)
    _fake(store, "baseline", 0, 100, 14.0, spi=0.7)
    for iters in (50, 100):
        store.publish(["baseline", "safpn_ejhead"], [0, 1], iters)
    shutil.rmtree(store.output_dir)  # the committed store alone
    _fake(store, "safpn_ejhead", 0, 100, 25.0, spi=1.0)  # an unpublished run directory
    return store


def test_frontier_points(tmp_path, monkeypatch):
    """Every finished (row, length) at v3's rate is a point; core-seconds from the timing file
    where it has the row, else the runs' own s/iter x threads."""
    monkeypatch.setattr(S, "config_hash", _fake_hash)
    store = _frontier_store(tmp_path)
    assert store.lengths("baseline") == [50, 100] and store.lengths("baseline", [1]) == [50]
    points = V3.frontier_points(store, [0, 1, 2], None)
    assert [(p["config"], p["iters"], p["n"]) for p in points] == [
        ("baseline", 50, 2),
        ("baseline", 100, 1),
        ("safpn_ejhead", 50, 2),
        ("safpn_ejhead", 100, 1),
    ]
    assert points[0]["box"] == pytest.approx((11.0, math.sqrt(2.0)))
    assert points[1]["core_s"] == pytest.approx(70.0) and points[1]["source"] == "runs"
    timing = _timing(str(tmp_path / "store"), {"baseline": 1.0, "safpn_ejhead": 2.0})
    timed = V3.frontier_points(store, [0, 1, 2], timing)
    assert timed[3]["core_s"] == pytest.approx(100 * 0.8) and timed[3]["source"] == "timed"
    assert "0.400 (timed)" in V3.frontier_markdown(timed, "f.png", [0, 1, 2])


@pytest.mark.slow
def test_table_only_writes_the_frontier_plot_and_the_v3_blocks(tmp_path, monkeypatch):
    """v3's --table-only writes the PNG (not rewritten when nothing changed: no churn) and the
    page's v3 blocks, the image linked relative to the page."""
    monkeypatch.setattr(S, "config_hash", _fake_hash)
    monkeypatch.setattr(R, "REPO_ROOT", str(tmp_path))
    store = _frontier_store(tmp_path)
    _timing(str(tmp_path / "store"), {"baseline": 1.0, "safpn_ejhead": 2.0})
    (tmp_path / "docs").mkdir()
    page, png = tmp_path / "docs" / "ablation.md", tmp_path / "docs" / "images" / "front.png"
    argv = ["--protocol", "v3", "--table-only", "--iters", "50", "--seeds", "0", "1", "2"]
    argv += ["--output-dir", store.output_dir, "--results-dir", store.results_dir]
    argv += ["--plot", str(png), "--markdown", str(page)]
    assert R.main(argv) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in data
    mtime = png.stat().st_mtime_ns
    assert R.main(argv) == 0
    assert png.read_bytes() == data and png.stat().st_mtime_ns == mtime  # no churn
    text = page.read_text()
    for markers in ("pilot", "tables", "tables-verdicts", "equal-cost", "frontier"):
        assert f"<!-- cpu-ablation-v3-{markers}:start -->" in text
    assert "![Box and mask AP against training core-seconds](images/front.png)" in text
    assert "| Mask R-CNN (Baseline) | 100 | 0.400 (timed) | 40 | 14.0 | 13.0 | 1/3 seeds |" in text
    assert "[baseline](../projects/cpu_ablation/configs_v2/baseline.py)" in text


@pytest.mark.slow
def test_v3_reuses_the_pilot_runs_and_keeps_the_schedule_shape():
    """v3's key is v2's config with the rate as an override, exactly as the pilot's runs were
    made: its baseline and SA-FPN + EJ-Head (through ALIASES.json) find the stored pilot runs.
    The equal-cost rows' longer schedule keeps its shape: warm-up and decay are fractions."""
    from detectron2.config import instantiate
    from detectron2.solver import LRMultiplier

    store = R.make_store(R.get_parser().parse_args(["--protocol", "v3"]))
    assert store.opts == ("optimizer.lr=0.04",) and P.V3_ITERS == 19200
    assert store.hash("baseline") == "8a8cb13e87"
    path = store.result_path("baseline", 0, 4800)
    assert path.endswith(os.path.join("results_v2", "baseline", "8a8cb13e87", "0", "4800.json"))
    run = store.load("baseline", 0, 4800)
    assert run["opts"] == list(store.opts) and run["config_hash"] == "8a8cb13e87"
    assert store.hash("safpn_ejhead") == "8f9f199486"  # an ALIASES.json entry
    assert store.load("safpn_ejhead", 0, 2400)["opts"] == list(store.opts)

    cfg = LazyConfig.load(store.config_file("baseline"))
    model = torch.nn.Linear(1, 1)
    lrs = {}
    for iters in (2400, 4560):
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), iters)
        lrs[iters] = []
        for i in range(iters):
            if i % (iters // 20) == 0:
                lrs[iters].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    assert lrs[2400] == pytest.approx(lrs[4560], abs=2e-3)
    assert lrs[2400][1] == pytest.approx(lrs[2400][2], abs=2e-3) or lrs[2400][1] < lrs[2400][2]


@pytest.mark.slow
def test_table_only_rewrites_v2_byte_identically_beside_v3(tmp_path, monkeypatch):
    """On the committed store, v2's --table-only leaves its page's blocks as they are, and v3's
    --table-only (the plot elsewhere) writes its own blocks into its page."""
    monkeypatch.setattr(R, "REPO_ROOT", str(tmp_path))
    v2_page = tmp_path / "docs" / "measurements" / "ablation" / "v2.md"
    v2_page.parent.mkdir(parents=True)
    original = open(os.path.join(REPO, "docs", "measurements", "ablation", "v2.md")).read()
    v2_page.write_text(original)
    page = tmp_path / "docs" / "ablation.md"
    page.write_text(open(os.path.join(REPO, "docs", "ablation.md")).read())

    def v2_blocks(text):
        start = text.index("<!-- cpu-ablation-v2-tables:start -->")
        return text[start : text.index("<!-- cpu-ablation-v2-len2400:start -->")]

    runs = ["--output-dir", str(tmp_path / "runs")]  # the committed store alone
    assert R.main(["--table-only", "--markdown", str(v2_page)] + runs) == 0
    assert v2_blocks(v2_page.read_text()) == v2_blocks(original)
    argv = ["--protocol", "v3", "--table-only", "--plot", str(tmp_path / "f.png")] + runs
    assert R.main(argv + ["--markdown", str(page)]) == 0
    assert (tmp_path / "f.png").is_file()
    assert "<!-- cpu-ablation-v3-pilot:start -->" in page.read_text()
