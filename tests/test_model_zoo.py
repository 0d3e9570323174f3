"""The model zoo's API (get, get_checkpoint_url, get_config(trained=True)), the packing of shipped
weights, the sa_ejhead://model_zoo/ paths, and tools/demo.py's default weights. The trained
models' AP is checked in test_model_zoo_trained.py."""

import logging
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.utils.file_io import PathManager

from sa_ejhead import model_zoo
from sa_ejhead import pretrained as P
from sa_ejhead.errors import SAEJHeadError
from sa_ejhead.predictor import build_predictor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "projects", "pretrain_backbone"))
from weights import export_submodule_weights  # noqa: E402  (what writes the shipped files)

ZOO = ("demo/sa_shapes.py", "demo/sa_shapes_baseline.py")
COCO = "COCO-InstanceSegmentation/mask_rcnn_R_50_SAFPN_EJHead_1x.py"


def test_the_demo_configs_have_shipped_weights_within_the_size_limit():
    assert model_zoo.trained_configs() == ZOO
    manifest = P.model_zoo_manifest()
    for config in ZOO:
        entry = manifest[config]
        path = os.path.join(P.MODEL_ZOO_DIR, entry["file"])
        assert os.path.getsize(path) == entry["bytes"] <= 10 * 10**6
        assert P.sha256_of(path) == entry["sha256"]
        assert entry["precision"] in P.PRECISIONS
        url = model_zoo.get_checkpoint_url(config)
        assert url == "sa_ejhead://model_zoo/" + entry["file"]


def test_a_config_without_weights_raises_one_line_naming_those_with_weights():
    with pytest.raises(model_zoo.ModelZooError) as info:
        model_zoo.get_checkpoint_url(COCO)
    message = str(info.value)
    assert "\n" not in message and COCO in message
    assert all(config in message for config in ZOO)
    assert isinstance(info.value, SAEJHeadError) and isinstance(info.value, RuntimeError)
    with pytest.raises(model_zoo.ModelZooError):
        model_zoo.get(COCO, trained=True)


def test_get_config_trained_sets_the_weights_of_either_config_kind():
    cfg = model_zoo.get_config("demo/sa_shapes.py", trained=True)
    assert cfg.train.init_checkpoint == model_zoo.get_checkpoint_url("demo/sa_shapes.py")
    assert model_zoo.get_config("demo/sa_shapes.py").train.init_checkpoint.startswith(
        P.PRETRAINED_PREFIX
    )


@pytest.mark.slow
def test_get_builds_the_trained_model_with_every_weight_from_the_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("SA_EJHEAD_CACHE", str(tmp_path))
    trained = model_zoo.get("demo/sa_shapes_baseline.py", trained=True, device="cpu")
    untrained = model_zoo.get("demo/sa_shapes_baseline.py", device="cpu")
    assert trained.training  # as Detectron2's model_zoo.get
    shipped = torch.load(
        PathManager.get_local_path(model_zoo.get_checkpoint_url("demo/sa_shapes_baseline.py")),
        map_location="cpu",
    )["model"]
    state, initial = trained.state_dict(), untrained.state_dict()
    assert set(shipped) == {k for k in state if not k.endswith("num_batches_tracked")}
    for name, value in shipped.items():
        assert torch.equal(state[name], value.to(state[name].dtype)), name
    # trained=False: the config's own initial weights (the pre-trained backbone): heads differ
    head = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(state[head], initial[head])


def test_model_zoo_paths_are_checked_and_unpacked_once(tmp_path, monkeypatch):
    ckpt = tmp_path / "model_final.pth"
    torch.save({"model": {"roi_heads.fc.weight": torch.randn(64, 32)}}, ckpt)
    name = "tiny.pth.xz"
    digest = export_submodule_weights(str(ckpt), str(tmp_path / name), prefix="", precision="int8")
    monkeypatch.setattr(P, "MODEL_ZOO_DIR", str(tmp_path))
    manifest = {"demo/tiny.py": {"file": name, "sha256": digest}}
    monkeypatch.setattr(P, "model_zoo_manifest", lambda: manifest)
    monkeypatch.setenv("SA_EJHEAD_CACHE", str(tmp_path / "cache"))
    local = PathManager.get_local_path(P.MODEL_ZOO_PREFIX + name)
    assert local.startswith(str(tmp_path / "cache")) and local.endswith("tiny.pth")
    weight = torch.load(local)["model"]["roi_heads.fc.weight"]
    assert weight.dtype == torch.float32 and weight.shape == (64, 32)
    with pytest.raises(FileNotFoundError, match="unknown model zoo weights"):
        PathManager.get_local_path(P.MODEL_ZOO_PREFIX + "nope.pth.xz")
    with open(tmp_path / name, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match=f"{name}: sha256 .* does not match"):
        PathManager.get_local_path(P.MODEL_ZOO_PREFIX + name)


def test_zoo_config_path_of_repository_and_package_files(tmp_path):
    assert model_zoo.zoo_config_path(os.path.join(REPO, "configs", "demo", "sa_shapes.py")) == (
        "demo/sa_shapes.py"
    )
    assert model_zoo.zoo_config_path(model_zoo.get_config_file(ZOO[1])) == ZOO[1]
    (tmp_path / "sa_shapes.py").write_text("")
    assert model_zoo.zoo_config_path(str(tmp_path / "sa_shapes.py")) is None


@pytest.mark.parametrize(
    "opts, expect_zoo", [([], True), (["train.init_checkpoint="], False), (["train.seed=1"], True)]
)
@pytest.mark.slow
def test_demo_predictor_uses_the_zoo_weights_unless_weights_are_given(
    opts, expect_zoo, caplog, tmp_path, monkeypatch
):
    monkeypatch.setenv("SA_EJHEAD_CACHE", str(tmp_path))
    config = os.path.join(REPO, "configs", "demo", "sa_shapes_baseline.py")
    with caplog.at_level(logging.INFO, logger="sa_ejhead"):
        predictor = build_predictor(config, opts)
    url = model_zoo.get_checkpoint_url("demo/sa_shapes_baseline.py")
    said = [r.getMessage() for r in caplog.records if "No weights given" in r.getMessage()]
    if expect_zoo:
        assert predictor.cfg.train.init_checkpoint == url and predictor.missing_weights == []
        assert len(said) == 1 and url in said[0]
    else:
        assert predictor.cfg.train.init_checkpoint == "" and not said


def test_the_readme_sample_image_is_sa_shapes_val_image_7():
    """docs/images/sa_shapes_val_000007.png (the README's quick start) is the generated image."""
    from detectron2.data import DatasetCatalog

    from sa_ejhead.data import prepare_sa_shapes

    prepare_sa_shapes()
    generated = DatasetCatalog.get("sa_shapes_val")[7]["file_name"]
    sample = cv2.imread(os.path.join(REPO, "docs", "images", "sa_shapes_val_000007.png"))
    assert sample is not None and np.array_equal(sample, cv2.imread(generated))
