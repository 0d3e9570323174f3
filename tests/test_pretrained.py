"""The committed pre-trained backbone: its hash, its sa_ejhead:// path, and what it loads into;
the separate pre-training set; the packing of shipped weights (projects/pretrain_backbone)."""

import hashlib
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from sa_ejhead import pretrained as P
from sa_ejhead.engine import build_lazy_model, load_lazy_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "sa_shapes_R18half_pretrain.pth"
URL = P.PRETRAINED_PREFIX + NAME
V2 = os.path.join(REPO, "projects", "cpu_ablation", "configs_v2")
sys.path.insert(0, os.path.join(REPO, "projects", "pretrain_backbone"))
from weights import export_submodule_weights, pack_weights  # noqa: E402

NAME_R34 = "sa_shapes_R34half_pretrain.pth.xz"


@pytest.mark.slow
@pytest.mark.parametrize("name", [NAME, NAME_R34])
def test_committed_weights_match_their_hash_and_size_limit(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SA_EJHEAD_CACHE", str(tmp_path))
    path = P.pretrained_path(name)
    assert os.path.getsize(path) < 10 * 2**20
    assert P.sha256_of(path) == P.PRETRAINED_BACKBONES[name]
    local = PathManager.get_local_path(P.PRETRAINED_PREFIX + name)
    if name.endswith(".xz"):
        assert local.startswith(str(tmp_path)) and local.endswith(name[:-3])
    else:
        assert local == path


@pytest.mark.parametrize(
    "config, name",
    [
        ("baseline", NAME),
        ("safpn_ejhead", NAME),
        ("r34_baseline", NAME_R34),
        ("r34_safpn_ejhead", NAME_R34),
    ],
)
@pytest.mark.slow
def test_weights_load_into_the_backbone_and_nothing_else(config, name, tmp_path, monkeypatch):
    monkeypatch.setenv("SA_EJHEAD_CACHE", str(tmp_path))
    url = P.PRETRAINED_PREFIX + name
    cfg = load_lazy_config(os.path.join(V2, f"{config}.py"), [])
    assert cfg.train.init_checkpoint == url
    torch.manual_seed(0)
    model = build_lazy_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    DetectionCheckpointer(model).resume_or_load(url, resume=False)
    shipped = torch.load(PathManager.get_local_path(url), map_location="cpu")["model"]
    after = model.state_dict()
    assert shipped and all(k.startswith("backbone.bottom_up.") for k in shipped)
    # every weight of the ResNet comes from the file (FrozenBN statistics included) ...
    bottom_up = [k for k in after if k.startswith("backbone.bottom_up.")]
    assert sorted(bottom_up) == sorted(shipped)
    for k in bottom_up:
        assert torch.equal(after[k], shipped[k].to(after[k].dtype)), k
    # ... and nothing else changes: the neck and the heads keep their initialisation
    for k, v in after.items():
        if not k.startswith("backbone.bottom_up."):
            assert torch.equal(v, before[k]), k


def test_a_changed_file_or_an_unknown_name_is_refused(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="unknown pretrained weights"):
        PathManager.get_local_path(P.PRETRAINED_PREFIX + "nope.pth")
    shutil.copy(P.pretrained_path(NAME), tmp_path / NAME)
    with open(tmp_path / NAME, "ab") as f:
        f.write(b"x")
    monkeypatch.setattr(P, "WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=f"{NAME}: sha256 .* does not match"):
        PathManager.get_local_path(URL)
    os.remove(tmp_path / NAME)
    with pytest.raises(FileNotFoundError, match="is missing"):
        PathManager.get_local_path(URL)


@pytest.mark.slow
def test_pretraining_set_shares_no_image_with_the_demo_set():
    """Another seed: the first images of each pretraining split differ from every image of
    sa_shapes_train/val (the generator's images depend only on seed, split and index)."""
    from detectron2.data import DatasetCatalog

    from sa_ejhead.data.datasets import SA_SHAPES_DEFAULTS, SA_SHAPES_PRETRAIN
    from sa_ejhead.data.synthetic import _render_image, _split_seed

    assert SA_SHAPES_PRETRAIN["seed"] != SA_SHAPES_DEFAULTS["seed"]
    assert SA_SHAPES_PRETRAIN["num_train"] > SA_SHAPES_DEFAULTS["num_train"]
    h, w = SA_SHAPES_PRETRAIN["height"], SA_SHAPES_PRETRAIN["width"]
    import cv2

    demo = set()
    for name in ("sa_shapes_train", "sa_shapes_val"):
        for record in DatasetCatalog.get(name):
            demo.add(hashlib.sha1(cv2.imread(record["file_name"])[:, :, ::-1].tobytes()).digest())
    for split in ("train", "val"):
        for i in range(10):
            rng = np.random.default_rng(_split_seed(SA_SHAPES_PRETRAIN["seed"], split, i))
            img, _ = _render_image(rng, h, w)
            assert hashlib.sha1(np.ascontiguousarray(img).tobytes()).digest() not in demo
    # the check can fail: the demo's own first image is found
    rng = np.random.default_rng(_split_seed(SA_SHAPES_DEFAULTS["seed"], "train", 0))
    img, _ = _render_image(rng, h, w)
    assert hashlib.sha1(np.ascontiguousarray(img).tobytes()).digest() in demo
    assert "sa_shapes_pretrain_train" in DatasetCatalog.list()


def test_xz_weights_are_checked_then_decompressed_once_into_the_cache(tmp_path, monkeypatch):
    """A ``.pth.xz`` file (how export_submodule_weights writes one) is checked by the sha256 of
    the compressed file and read back as the same tensors, from a cached decompressed copy."""
    ckpt = tmp_path / "model_final.pth"
    weights = {"backbone.bottom_up.stem.conv1.weight": torch.randn(4, 3, 3, 3)}
    torch.save({"model": {**weights, "roi_heads.x": torch.ones(2)}}, ckpt)
    name = "tiny.pth.xz"
    digest = export_submodule_weights(
        str(ckpt), str(tmp_path / name), prefix="backbone.bottom_up.", precision="fp16"
    )
    with open(tmp_path / name, "rb") as f:
        assert f.read(6) == b"\xfd7zXZ\x00"  # really xz
    monkeypatch.setattr(P, "WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setitem(P.PRETRAINED_BACKBONES, name, digest)
    monkeypatch.setenv("SA_EJHEAD_CACHE", str(tmp_path / "cache"))
    local = PathManager.get_local_path(P.PRETRAINED_PREFIX + name)
    assert local.startswith(str(tmp_path / "cache")) and local.endswith("tiny.pth")
    loaded = torch.load(local, map_location="cpu")["model"]
    assert list(loaded) == list(weights)
    assert torch.equal(
        loaded["backbone.bottom_up.stem.conv1.weight"],
        weights["backbone.bottom_up.stem.conv1.weight"].half(),
    )
    # the cached copy is reused (not rewritten) ...
    mtime = os.path.getmtime(local)
    assert PathManager.get_local_path(P.PRETRAINED_PREFIX + name) == local
    assert os.path.getmtime(local) == mtime
    # ... and a changed compressed file is refused before anything is decompressed
    with open(tmp_path / name, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match=f"{name}: sha256 .* does not match"):
        PathManager.get_local_path(P.PRETRAINED_PREFIX + name)


@pytest.mark.slow
def test_r34_pretraining_differs_from_r18_only_in_depth_and_output():
    from detectron2.config import LazyConfig

    here = os.path.join(REPO, "projects", "pretrain_backbone")
    r18 = load_lazy_config(os.path.join(here, "pretrain_config.py"), [])
    r34 = load_lazy_config(os.path.join(here, "pretrain_config_r34.py"), [])
    stages = r34.model.backbone.bottom_up.stages
    assert [s.num_blocks for s in stages] == [3, 4, 6, 3]
    assert [s.stride_per_block for s in stages] == [
        [1, 1, 1],
        [2, 1, 1, 1],
        [2, 1, 1, 1, 1, 1],
        [2, 1, 1],
    ]
    assert r34.train.output_dir != r18.train.output_dir
    # everything else is the same: put the depth and the output back, and the configs match
    for s18, s34 in zip(r18.model.backbone.bottom_up.stages, stages):
        s34.num_blocks, s34.stride_per_block = s18.num_blocks, s18.stride_per_block
    r34.train.output_dir = r18.train.output_dir
    assert LazyConfig.to_py(r34) == LazyConfig.to_py(r18)


def test_pack_and_unpack_each_precision():
    torch.manual_seed(0)
    state = {
        "conv.weight": torch.randn(16, 8, 3, 3),
        "fc.weight": torch.randn(64, 32) * torch.linspace(0.01, 3, 64)[:, None],
        "fc.bias": torch.randn(64),
        "small.weight": torch.randn(4, 4),  # under 1024 values: half precision
        "bn.num_batches_tracked": torch.tensor(7),
    }
    fp32 = P.unpack_weights(pack_weights(state, "fp32"))["model"]
    assert all(torch.equal(fp32[k], v) for k, v in state.items())
    fp16 = P.unpack_weights(pack_weights(state, "fp16"))["model"]
    assert fp16["fc.weight"].dtype == torch.float16 and fp16["bn.num_batches_tracked"] == 7
    fc_only = pack_weights(state, "int8-fc")
    assert sorted(fc_only["int8"]) == ["fc.weight"]
    assert fc_only["model"]["conv.weight"].dtype == torch.float16
    packed = pack_weights(state, "int8")
    assert sorted(packed["int8"]) == ["conv.weight", "fc.weight"]
    int8 = P.unpack_weights(packed)["model"]
    assert set(int8) == set(state)
    for name in ("conv.weight", "fc.weight"):
        w, q = state[name], int8[name]
        assert q.dtype == torch.float32 and q.shape == w.shape
        # per output channel: the error of each row is at most half its own step
        step = w.abs().flatten(1).amax(1) / 127
        error = (q - w).abs().flatten(1).amax(1)
        assert torch.all(error <= step / 2 + 1e-7)
    assert int8["small.weight"].dtype == torch.float16
    with pytest.raises(ValueError, match="precision 'int4'"):
        pack_weights(state, "int4")
