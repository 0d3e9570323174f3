"""``train.init_checkpoint`` for the SA-FPN + EJ-Head model (issue 5, item 4).

Detectron2's ``DetectionCheckpointer`` fills what matches and keeps the rest as initialised:

* a Detectron2 Mask R-CNN checkpoint fills the ResNet, the top-down FPN (SA-FPN keeps FPN's
  ``fpn_lateral*`` / ``fpn_output*`` names), the RPN, and the ROI-head tensors whose shapes match;
  the bottom-up-fusion pathway, the fuse convs, the refinement and the enlarged fc1 (14x14
  flattened) are new;
* an ImageNet backbone (the ``detectron2://ImageNetPretrained/MSRA/R-50.pkl`` Caffe2 format, or a
  Detectron2 state dict of ``backbone.bottom_up``) fills the ResNet only.

All checks compare tensor values, not just logs. Random weights, no downloads.
"""

import logging
import pickle

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.model_zoo import get_config as d2_get_config

from sa_ejhead import model_zoo

_OURS = "COCO-InstanceSegmentation/mask_rcnn_R_50_SAFPN_EJHead_1x.py"


@pytest.fixture(scope="module")
def ours():
    """The R-50 SA-FPN + EJ-Head model of the paper's Table 2, random init."""
    torch.manual_seed(0)
    cfg = model_zoo.get_config(_OURS)
    return instantiate(cfg.model).eval()


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _changed(model, before):
    """Names of the state-dict entries whose values differ from ``before``."""
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


FC1 = "roi_heads.box_head.fc1."


def _is_td_fpn(key):
    return key.startswith(("backbone.fpn_lateral", "backbone.fpn_output"))


def _c2_name(key):
    """Detectron2 ResNet name -> Caffe2 (MSRA ImageNet .pkl) name, e.g.
    ``res2.0.conv1.norm.weight`` -> ``res2_0_branch2a_bn_s``."""
    key = key.replace("norm.weight", "bn.s").replace("norm.bias", "bn.b")
    key = key.replace("stem.conv1.bn.", "res_conv1_bn.").replace("stem.conv1.", "conv1.")
    for d2, c2 in [("conv1", "branch2a"), ("conv2", "branch2b"), ("conv3", "branch2c")]:
        key = key.replace(f".{d2}.", f".{c2}.")
    key = key.replace(".shortcut.", ".branch1.")
    key = key.replace(".weight", ".w").replace(".bias", ".b")
    return key.replace(".", "_")


@pytest.mark.slow
def test_detectron2_mask_rcnn_checkpoint(ours, tmp_path, caplog):
    torch.manual_seed(1)
    d2_model = instantiate(d2_get_config("common/models/mask_rcnn_fpn.py").model)
    with torch.no_grad():  # fc biases start at 0 in both models: make them tell apart
        for p in d2_model.roi_heads.box_head.parameters():
            p.add_(0.01)
    DetectionCheckpointer(d2_model, save_dir=str(tmp_path)).save("mask_rcnn")
    theirs = d2_model.state_dict()
    del d2_model

    before = _snapshot(ours)
    with caplog.at_level(logging.INFO):
        DetectionCheckpointer(ours).load(str(tmp_path / "mask_rcnn.pth"))
    after = ours.state_dict()

    # What loads: every tensor of the checkpoint whose name and shape match...
    # (but a layer loads whole or not at all: fc1's bias has the same shape in both models, yet
    # it stays new with fc1's weight, see EJFastRCNNConvFCHead._load_from_state_dict)
    loaded = {
        k
        for k in after
        if k in theirs and theirs[k].shape == after[k].shape and not k.startswith(FC1)
    }
    for k in loaded:
        assert torch.equal(after[k], theirs[k]), k
    # ... and that is exactly the ResNet, the top-down FPN, the RPN and the ROI heads but fc1.
    expected = {
        k
        for k in after
        if k.startswith(("backbone.bottom_up.", "proposal_generator."))
        or _is_td_fpn(k)
        or k.startswith(("roi_heads.box_head.fc2.", "roi_heads.box_predictor."))
        or k.startswith("roi_heads.mask_head.")
    }
    assert loaded == expected
    assert any(k.startswith("backbone.bottom_up.res5.") for k in loaded)
    assert {f"backbone.fpn_lateral{i}.weight" for i in range(2, 6)} <= loaded
    assert {f"backbone.fpn_output{i}.weight" for i in range(2, 6)} <= loaded
    assert "roi_heads.mask_head.predictor.weight" in loaded
    assert "roi_heads.box_predictor.cls_score.weight" in loaded

    # What is new keeps its initial values: the BUF pathway and fuse convs, the refinement, and
    # fc1's weight, whose 14x14 input (256*14*14 -> 1024) doesn't match the checkpoint's 7x7.
    new = set(after) - loaded
    for k in new:
        assert torch.equal(after[k], before[k]), k
    assert theirs["roi_heads.box_head.fc1.weight"].shape == (1024, 256 * 7 * 7)
    assert after["roi_heads.box_head.fc1.weight"].shape == (1024, 256 * 14 * 14)
    assert {FC1 + "weight", FC1 + "bias"} <= new
    assert not torch.equal(after[FC1 + "bias"], theirs[FC1 + "bias"])
    assert any(k.startswith("roi_heads.refinement.") for k in new)
    assert {k.split(".")[0] for k in new} == {"backbone", "roi_heads"}
    new_neck = {k for k in new if k.startswith("backbone.")}
    assert new_neck and not any(_is_td_fpn(k) or "bottom_up" in k for k in new_neck)
    # every new tensor is a neck, refinement or fc1 one: the rest of the model is in the checkpoint
    assert {k for k in new if k.startswith("roi_heads.")} == {
        k for k in after if k.startswith("roi_heads.refinement.")
    } | {FC1 + "weight", FC1 + "bias"}

    # The log lists the skipped fc1 and the new tensors.
    assert "roi_heads.box_head.fc1.weight" in caplog.text
    assert "not found in the checkpoint" in caplog.text
    assert "roi_heads.refinement" in caplog.text


def _random_resnet(seed):
    """A Detectron2 ResNet-50 with random convs *and* random FrozenBN statistics (their default
    init, ones and zeros, would be indistinguishable from the model's own)."""
    torch.manual_seed(seed)
    resnet = instantiate(d2_get_config("common/models/mask_rcnn_fpn.py").model.backbone.bottom_up)
    for k, v in resnet.state_dict().items():
        if "norm" in k:
            v.copy_(torch.rand_like(v) + 0.5)
    return resnet


@pytest.mark.slow
def test_imagenet_caffe2_pkl_backbone(ours, tmp_path):
    """A ``detectron2://ImageNetPretrained/MSRA/R-50.pkl``-style file (Caffe2 names, numpy blobs,
    an ImageNet classifier) fills ``backbone.bottom_up`` and nothing else."""
    resnet = _random_resnet(2)
    blobs = {
        _c2_name(k): v.numpy().copy()
        for k, v in resnet.state_dict().items()
        if not k.endswith(("running_mean", "running_var"))  # folded into scale/bias in the .pkl
    }
    assert "res2_0_branch2a_bn_s" in blobs and "res_conv1_bn_b" in blobs and "conv1_w" in blobs
    blobs["fc1000_w"] = torch.randn(1000, 2048).numpy()
    blobs["fc1000_b"] = torch.randn(1000).numpy()
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)

    before = _snapshot(ours)
    DetectionCheckpointer(ours).load(str(path))
    after = ours.state_dict()
    for k, v in resnet.state_dict().items():
        if k.endswith("running_mean"):  # BN folded into scale and bias: mean 0, var 1
            v = torch.zeros_like(v)
        elif k.endswith("running_var"):
            v = torch.ones_like(v)
        assert torch.equal(after["backbone.bottom_up." + k], v), k
    changed = _changed(ours, before)
    assert changed and all(k.startswith("backbone.bottom_up.") for k in changed)
    assert (
        len([k for k in changed if not k.endswith(("running_mean", "running_var"))])
        == len(blobs) - 2
    )


@pytest.mark.slow
def test_detectron2_backbone_state_dict(ours, tmp_path):
    """A Detectron2 state dict of the backbone's ``bottom_up`` (e.g. converted from torchvision)
    loads by name into the ResNet."""
    resnet = _random_resnet(3)
    state = {"backbone.bottom_up." + k: v for k, v in resnet.state_dict().items()}
    torch.save({"model": state}, tmp_path / "backbone.pth")

    before = _snapshot(ours)
    DetectionCheckpointer(ours).load(str(tmp_path / "backbone.pth"))
    after = ours.state_dict()
    for k, v in state.items():
        assert torch.equal(after[k], v), k
    assert _changed(ours, before) == {k for k in state if not torch.equal(state[k], before[k])}
    assert len(_changed(ours, before)) > 0.9 * len(state)
