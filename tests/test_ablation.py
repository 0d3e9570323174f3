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
