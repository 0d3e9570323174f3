"""The command-line tools: lazyconfig_train_net.py, train_net.py, demo.py and train_demo.py."""

import json
import os
import runpy

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from _helpers import (
    REPO,
    listen,
    run_tool_script,
    tiny_yacs_config,
    write_tiny_coco,
    write_tiny_lazy_config_file,
)
from sa_ejhead import predictor as predictor_module
from sa_ejhead.engine import default_argument_parser, is_lazy_config
from sa_ejhead.engine import lazy as lazy_engine
from sa_ejhead.errors import ImageReadError
from sa_ejhead.model_zoo import get_config_file
from sa_ejhead.predictor import build_predictor, read_image

MODEL = get_config_file("common/models/mask_rcnn_safpn_ejhead.py")


@pytest.fixture(scope="module")
def lazy_run(tmp_path_factory):
    """Train 2 iterations with tools/lazyconfig_train_net.py (in this process)."""
    root = tmp_path_factory.mktemp("tools")
    json_file, image_root = write_tiny_coco(str(root / "data"), num_images=3, seed=6)
    config = write_tiny_lazy_config_file(
        str(root / "tiny.py"),
        train_dataset="tools_train",
        test_dataset="tools_val",
        output_dir=str(root / "unused"),
        model_config=MODEL,
        max_iter=4,
    )
    out = str(root / "out")
    argv = ["--config-file", config, "--coco-dataset", f"tools_train={json_file},{image_root}"]
    argv += ["--coco-dataset", f"tools_val={json_file},{image_root}"]
    argv += ["train.max_iter=2", f"train.output_dir={out}"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert run_tool_script("lazyconfig_train_net.py", argv, monkeypatch) == 0
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    return dict(
        root=root, config=config, out=out, json_file=json_file, image_root=image_root, log=log
    )


def _copypaste_lines(results):
    return [",".join(f"{v:.4f}" for v in list(results[task].values())[:6]) for task in results]


@pytest.mark.slow
def test_lazyconfig_train_then_eval_only(lazy_run, monkeypatch):
    out = lazy_run["out"]
    assert {"model_final.pth", "last_checkpoint", "config.yaml", "metrics.json"} <= set(
        os.listdir(out)
    )
    assert "copypaste: Task: segm" in lazy_run["log"]  # evaluation at the end of training

    args = default_argument_parser().parse_args(
        [
            "--config-file",
            lazy_run["config"],
            "--eval-only",
            "--coco-dataset",
            f"tools_val={lazy_run['json_file']},{lazy_run['image_root']}",
            f"train.init_checkpoint={os.path.join(out, 'model_final.pth')}",
            f"train.output_dir={lazy_run['root'] / 'eval'}",
        ]
    )
    evaluated = []

    def do_test(cfg, model):
        evaluated.append(model)
        return real_do_test(cfg, model)

    real_do_test = lazy_engine.do_test
    monkeypatch.setattr(lazy_engine, "do_test", do_test)
    results = lazy_engine.main(args)
    assert set(results) == {"bbox", "segm"}
    # Same weights -> the same AP as the evaluation at the end of training.
    for line in _copypaste_lines(results):
        assert f"copypaste: {line}" in lazy_run["log"]
    # After 2 iterations the AP may well be 0 with any weights: check the weights themselves.
    # The evaluated model holds exactly the trained checkpoint...
    trained = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
    (model,) = evaluated
    state = model.state_dict()
    assert set(state) == set(trained)
    assert [k for k, v in trained.items() if not torch.equal(state[k].cpu(), v)] == []
    # ... which a freshly built model does not (so that the check above can fail).
    fresh = lazy_engine.build_lazy_model(lazy_engine.load_lazy_config(lazy_run["config"]))
    assert any(not torch.equal(t, trained[k]) for k, t in fresh.state_dict().items())


def test_lazyconfig_bad_coco_dataset_spec(lazy_run):
    args = default_argument_parser().parse_args(
        ["--config-file", lazy_run["config"], "--coco-dataset", "no_equals_sign.json,imgs"]
    )
    with pytest.raises(ValueError, match="NAME=ANNOTATIONS.json,IMAGE_DIR"):
        lazy_engine.main(args)


@pytest.mark.slow
def test_train_net_yacs_cli(tmp_path, monkeypatch, capsys):
    json_file, image_root = write_tiny_coco(str(tmp_path / "data"), num_images=2, seed=7)
    cfg = tiny_yacs_config("yacs_cli", "yacs_cli", str(tmp_path / "out"), max_iter=1)
    yaml_file = tmp_path / "tiny.yaml"
    yaml_file.write_text(cfg.dump())
    spec = f"yacs_cli={json_file},{image_root}"
    run_tool_script(
        "train_net.py", ["--config-file", str(yaml_file), "--coco-dataset", spec], monkeypatch
    )
    weights = tmp_path / "out" / "model_final.pth"
    assert weights.is_file()

    run_tool_script(
        "train_net.py",
        ["--config-file", str(yaml_file), "--coco-dataset", spec, "--eval-only"]
        + ["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "eval")],
        monkeypatch,
    )
    assert (tmp_path / "eval" / "inference" / "coco_instances_results.json").is_file()

    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.dump().replace("INTERLEAVE:", "INTERLEAVES:", 1))
    # an input error: one line naming the file and the key, the traceback in a file, exit 1
    capsys.readouterr()
    assert run_tool_script("train_net.py", ["--config-file", str(bad)], monkeypatch) == 1
    err = capsys.readouterr().err.splitlines()
    (line,) = [l for l in err if l.startswith("train_net: error: ")]
    assert "MODEL.EJ_HEAD.INTERLEAVES" in line and str(bad) in line
    assert "Traceback" not in "".join(err)
    log_file = line.split("(traceback in ")[1].split(";")[0]
    assert "Traceback" in open(log_file).read() and line.endswith("; --debug shows it)")
    with pytest.raises(KeyError, match="MODEL.EJ_HEAD.INTERLEAVES"):
        run_tool_script("train_net.py", ["--config-file", str(bad), "--debug"], monkeypatch)


# --- demo ---------------------------------------------------------------------------------


def _demo_tool():
    """tools/demo.py's functions (the script loaded without running it)."""
    return runpy.run_path(os.path.join(REPO, "tools", "demo.py"))


def _demo_inputs(folder, json_file_dir):
    os.makedirs(folder, exist_ok=True)
    images = sorted(os.listdir(json_file_dir))[:2]
    for name in images:
        img = cv2.imread(os.path.join(json_file_dir, name))
        cv2.imwrite(os.path.join(folder, "good_" + name), img)
    with open(os.path.join(folder, "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"truncated")
    return sorted(os.path.join(folder, "good_" + n) for n in images)


@pytest.mark.slow
def test_demo_folder_with_a_broken_image(lazy_run, tmp_path, monkeypatch, caplog, capsys):
    inputs = str(tmp_path / "in")
    good = _demo_inputs(inputs, lazy_run["image_root"])
    out = tmp_path / "vis"
    argv = ["--config-file", lazy_run["config"], "--input", inputs, "--output", str(out)]
    argv += ["--confidence-threshold", "0.0", "--coco-dataset"]
    argv += [f"tools_val={lazy_run['json_file']},{lazy_run['image_root']}"]
    argv += ["--opts", f"train.init_checkpoint={os.path.join(lazy_run['out'], 'model_final.pth')}"]
    # the runs after the first differ in their inputs and outputs only: they get the predictor
    # the first one built (each build loads the config and the checkpoint again, 0.6 s)
    built, build_predictor = [], predictor_module.build_predictor

    def build_once(config_file, opts):
        if not built:
            built.append((config_file, opts, build_predictor(config_file, opts)))
        assert built[0][:2] == (config_file, opts)
        return built[0][2]

    monkeypatch.setattr(predictor_module, "build_predictor", build_once)
    with listen(caplog):
        code = run_tool_script("demo.py", argv, monkeypatch)
    assert code == 1  # one image could not be read; the others were drawn
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in good)
    for p in good:
        assert cv2.imread(str(out / os.path.basename(p))).shape == cv2.imread(p).shape
    assert "broken.png" in caplog.text and "cannot read image" in caplog.text

    # A glob and a single output file.
    single = tmp_path / "one.jpg"
    argv[argv.index("--input") + 1] = os.path.join(inputs, "good_*.png")
    argv[argv.index("--output") + 1] = str(tmp_path / "glob")
    code = run_tool_script("demo.py", argv, monkeypatch)
    assert code == 0 and len(os.listdir(tmp_path / "glob")) == 2
    argv[argv.index("--input") + 1] = good[0]
    argv[argv.index("--output") + 1] = str(single)
    code = run_tool_script("demo.py", argv, monkeypatch)
    assert code == 0 and single.is_file()

    # Only broken images: the run fails, naming the file.
    argv[argv.index("--input") + 1] = os.path.join(inputs, "broken.png")
    argv[argv.index("--output") + 1] = str(tmp_path / "none")
    capsys.readouterr()
    assert run_tool_script("demo.py", argv, monkeypatch) == 1
    # (log records may precede it on stderr)
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.startswith("demo: error: ")]
    assert "none of the 1 input images could be read" in line and "broken.png" in line


def test_read_image_and_inputs_errors(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match=r"cannot read image '.*x\.jpg'"):
        read_image(str(bad))
    expand_inputs = _demo_tool()["expand_inputs"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(FileNotFoundError, match="glob matches no file"):
        expand_inputs([str(tmp_path / "*.png")])
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no image files"):
        expand_inputs([str(tmp_path / "empty")])
    assert expand_inputs([str(tmp_path), str(bad)]) == [str(bad)]


def test_is_lazy_config(tmp_path):
    lazy_yaml = tmp_path / "lazy.yaml"
    lazy_yaml.write_text("model:\n  _target_: x\ntrain:\n  device: cpu\n")
    yacs_yaml = tmp_path / "yacs.yaml"
    yacs_yaml.write_text("_BASE_: base.yaml\nMODEL:\n  DEVICE: cpu\n")
    assert is_lazy_config(MODEL) and is_lazy_config(str(lazy_yaml))
    assert not is_lazy_config(str(yacs_yaml))
    # LazyConfig.save writes Python-object tags (the model's ShapeSpec): still a LazyConfig
    saved = tmp_path / "saved.yaml"
    LazyConfig.save(LazyConfig.load(MODEL), str(saved))
    assert "!!python" in saved.read_text()
    assert is_lazy_config(str(saved))


def test_draw_predictions_threshold_and_labels():
    draw_predictions = _demo_tool()["draw_predictions"]
    MetadataCatalog.get("test_tools_draw").thing_classes = ["cat", "dog"]
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    inst = Instances((64, 64))
    inst.pred_boxes = Boxes(torch.tensor([[4.0, 4.0, 30.0, 30.0], [34.0, 34.0, 60.0, 60.0]]))
    inst.scores = torch.tensor([0.9, 0.3])
    inst.pred_classes = torch.tensor([0, 1])
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 8:26, 8:26] = True
    masks[1, 38:56, 38:56] = True
    inst.pred_masks = masks
    meta = MetadataCatalog.get("test_tools_draw")
    np.random.seed(0)  # the Visualizer picks random instance colours
    picture, drawn = draw_predictions(image, inst, meta, confidence_threshold=0.5)
    assert picture.shape == image.shape and len(drawn) == 1
    assert drawn.scores.tolist() == [pytest.approx(0.9)]
    assert picture[8:26, 8:26].any()  # the kept instance is drawn (mask + box)
    # The picture is exactly the one of the kept instance alone, not the one of both.
    np.random.seed(0)
    only_first, _ = draw_predictions(image, inst[[0]], meta, confidence_threshold=0.0)
    both, drawn = draw_predictions(image, inst, meta, confidence_threshold=0.2)
    assert np.array_equal(picture, only_first)
    assert len(drawn) == 2 and not np.array_equal(picture, both)


def _warnings(caplog):
    return [r for r in caplog.records if r.name.startswith("sa_ejhead") and r.levelno >= 30]


@pytest.mark.slow
def test_demo_warns_when_the_heads_are_untrained(lazy_run, tmp_path, caplog):
    final = os.path.join(lazy_run["out"], "model_final.pth")
    weights = torch.load(final, weights_only=False)["model"]
    # As an ImageNet checkpoint: weights for the bottom-up ResNet only.
    backbone_only = str(tmp_path / "backbone_only.pth")
    torch.save({"model": {k: v for k, v in weights.items() if ".bottom_up." in k}}, backbone_only)
    with listen(caplog):
        predictor = build_predictor(lazy_run["config"], [f"train.init_checkpoint={backbone_only}"])
    assert predictor.missing_weights and not any(
        ".bottom_up." in k for k in predictor.missing_weights
    )
    (record,) = _warnings(caplog)
    message = record.getMessage()
    assert "backbone_only.pth" in message and "heads are untrained" in message
    assert "roi_heads" in message and "proposal_generator" in message
    assert "backbone.bottom_up" not in message
    assert "train.init_checkpoint=" in message  # the fix

    with listen(caplog):
        predictor = build_predictor(lazy_run["config"], ["train.init_checkpoint="])
    assert set(predictor.missing_weights) == set(weights)
    assert "train.init_checkpoint is empty" in caplog.text and "heads are untrained" in caplog.text

    # A trained Mask R-CNN checkpoint of the model: no warning, and its weights in the model.
    with listen(caplog):
        predictor = build_predictor(lazy_run["config"], [f"train.init_checkpoint={final}"])
    assert predictor.missing_weights == [] and not _warnings(caplog)
    state = predictor.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert not predictor.model.training


@pytest.mark.slow
def test_demo_yacs_warns_when_the_heads_are_untrained(tmp_path, caplog):
    yaml_file = tmp_path / "tiny.yaml"
    yaml_file.write_text(tiny_yacs_config("unused", "unused", str(tmp_path / "out")).dump())
    with listen(caplog):
        predictor = build_predictor(str(yaml_file))
    assert "MODEL.WEIGHTS is empty" in caplog.text and "MODEL.WEIGHTS output/" in caplog.text
    weights = predictor.model.state_dict()
    full, partial = str(tmp_path / "full.pth"), str(tmp_path / "partial.pth")
    torch.save({"model": weights}, full)
    torch.save({"model": {k: v for k, v in weights.items() if "roi_heads" not in k}}, partial)
    with listen(caplog):
        predictor = build_predictor(str(yaml_file), ["MODEL.WEIGHTS", partial])
    assert predictor.missing_weights and all("roi_heads" in k for k in predictor.missing_weights)
    assert "has no weights for roi_heads (" in caplog.text and "heads are untrained" in caplog.text
    with listen(caplog):
        predictor = build_predictor(str(yaml_file), ["MODEL.WEIGHTS", full])
    assert predictor.missing_weights == [] and not _warnings(caplog)
    # one image in, instances in the image's coordinates out (the test size is 64..128)
    instances = predictor(np.zeros((40, 90, 3), np.uint8))["instances"]
    assert instances.image_size == (40, 90)


class _FailingPredictor:
    """A predictor that raises on the images ``fails(image)`` selects; no instance otherwise."""

    metadata = MetadataCatalog.get("test_tools_failing")

    def __init__(self, fails):
        self.fails = fails
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        if self.fails(image):
            raise RuntimeError(f"model failed on a {image.shape[1]}x{image.shape[0]} image")
        instances = Instances(image.shape[:2])
        instances.pred_boxes = Boxes(torch.zeros(0, 4))
        instances.scores = torch.zeros(0)
        instances.pred_classes = torch.zeros(0, dtype=torch.int64)
        return {"instances": instances}


def _images(folder, widths):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, w in enumerate(widths):
        paths.append(os.path.join(folder, f"im{i}.png"))
        cv2.imwrite(paths[-1], np.full((32, w, 3), 40 * i, np.uint8))
    return paths


def test_demo_goes_on_when_the_predictor_raises(tmp_path, caplog, monkeypatch):
    paths = _images(str(tmp_path / "in"), [32, 48, 40])
    predictor = _FailingPredictor(lambda image: image.shape[1] == 48)
    with listen(caplog):
        written, failures = _demo_tool()["draw_images"](
            predictor, [str(tmp_path / "in")], str(tmp_path / "out")
        )
    assert predictor.calls == 3  # the image after the failing one too
    assert sorted(os.listdir(tmp_path / "out")) == ["im0.png", "im2.png"] and len(written) == 2
    ((path, message),) = failures
    assert path == paths[1] and "cannot predict on image" in message and "48x32" in message
    assert paths[1] in caplog.text and "Traceback" in caplog.text

    # tools/demo.py: exit status 1 when some failed, an error naming them when all did.
    monkeypatch.setattr(predictor_module, "build_predictor", lambda config_file, opts: predictor)
    argv = ["--config-file", "unused.py", "--input", str(tmp_path / "in"), "--output"]
    with listen(caplog):
        assert run_tool_script("demo.py", argv + [str(tmp_path / "o1")], monkeypatch) == 1
    assert "1 of 3 images could not be read or predicted on: " + paths[1] in caplog.text
    predictor.fails = lambda image: True
    with listen(caplog), pytest.raises(RuntimeError, match="none of the 3 input images") as e:
        run_tool_script("demo.py", argv + [str(tmp_path / "o2")], monkeypatch)
    assert all(p in str(e.value) for p in paths)
    assert caplog.text.count("Traceback") == 1  # once, not for every image


@pytest.mark.slow
def test_train_demo_writes_every_output_and_repeats_exactly(
    lazy_run, tmp_path, monkeypatch, capsys
):
    """`make demo`'s pipeline on the tiny config (4 iterations, shortened to 2 with --iters),
    twice into the same folder: every output is written and named, the second run replaces the
    first's files and trains exactly the same weights."""
    out = tmp_path / "demo"
    argv = ["--config", lazy_run["config"], "--iters", "2", "--output-dir", str(out)]
    argv += ["--num-vis", "2", "--threads", "1"]
    runs = []
    for _ in range(2):
        capsys.readouterr()
        assert run_tool_script("train_demo.py", argv, monkeypatch) == 0
        printed = capsys.readouterr().out
        results = json.loads((out / "results.json").read_text())
        weights = torch.load(out / "model_final.pth", weights_only=False)["model"]
        metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
        runs.append((results, weights, metrics))

        (summary,) = [l for l in printed.splitlines() if l.startswith("[demo] ")]
        box, mask = results["bbox"]["AP"], results["segm"]["AP"]
        shortened = "after 2 iterations (--iters 2; the full schedule is 4)"
        assert summary.startswith(f"[demo] box AP {box:.1f}, mask AP {mask:.1f} {shortened}")
        for name in ("ap_table.md", "loss.png", "vis/", "model_final.pth", "metrics.json"):
            assert name in summary and os.path.exists(out / name)
        table = (out / "ap_table.md").read_text()
        assert table.startswith("COCO AP (%) on tools_val, tiny.py, 2 iterations")
        assert f"| bbox | {box:.1f} |" in table
        pictures = sorted(os.listdir(out / "vis"))
        assert len(pictures) == 2
        # ground truth | 8-px gap | predictions, each at twice the image's size
        image = cv2.imread(os.path.join(lazy_run["image_root"], pictures[0]))
        picture = cv2.imread(str(out / "vis" / pictures[0]))
        assert picture.shape == (2 * image.shape[0], 4 * image.shape[1] + 8, 3)
        assert LazyConfig.load(str(out / "config.yaml")).train.max_iter == 2

    (results1, weights1, metrics1), (results2, weights2, metrics2) = runs
    assert [m["iteration"] for m in metrics2 if "total_loss" in m] == [1]  # not appended to
    assert results1 == results2
    assert set(weights1) == set(weights2)
    assert all(torch.equal(weights1[k], weights2[k]) for k in weights1)


# --- errors a person can read ------------------------------------------------------------------


def test_run_tool_prints_input_errors_as_one_line(capsys):
    from sa_ejhead.data import DatasetFormatError
    from sa_ejhead.errors import run_tool

    def bad_input():
        raise DatasetFormatError("ann.json: annotations[3].bbox: bad", file="ann.json")

    assert run_tool(bad_input, tool="x") == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("x: error: ann.json: annotations[3].bbox: bad (traceback in ")
    assert line.endswith("; --debug shows it)")
    with pytest.raises(DatasetFormatError):
        run_tool(bad_input, debug=True)
    assert run_tool(lambda: 3) == 3 and run_tool(lambda: {"AP": 1}) == 0
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_tool(lambda: 1 / 0)


@pytest.mark.parametrize(
    "content, field",
    [
        ('{"images": [', "malformed JSON at line 1"),
        (
            '{"images": [], "annotations": [], "categories": [{"id": 1}]}',
            "categories[0].name: is missing",
        ),
    ],
)
def test_training_tool_reports_a_bad_annotation_file(tmp_path, monkeypatch, capsys, content, field):
    ann = tmp_path / "ann.json"
    ann.write_text(content)
    (tmp_path / "images").mkdir()
    argv = ["--config-file", MODEL, "--coco-dataset", f"bad={ann},{tmp_path / 'images'}"]
    assert run_tool_script("lazyconfig_train_net.py", argv, monkeypatch) == 1
    err = capsys.readouterr().err.splitlines()
    (line,) = [l for l in err if l.startswith("lazyconfig_train_net: error: ")]
    assert line.startswith(f"lazyconfig_train_net: error: {ann}: ") and field in line
    assert "(traceback in " in line and "Traceback" not in "".join(err)
