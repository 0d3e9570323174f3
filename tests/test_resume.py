"""Resuming loses nothing: N iterations in one go == N/2, a crash, ``resume=True``, N/2 more.

Also: a crash while a checkpoint is written leaves no truncated ``model_*.pth`` and keeps the
previous ``last_checkpoint`` valid.
"""

import os
from unittest import mock

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer

from sa_ejhead.data import register_coco_instances_checked
from sa_ejhead.engine import AtomicDetectionCheckpointer, do_train
from _helpers import Crash, crash_at, tiny_lazy_config, write_tiny_coco
from sa_ejhead.model_zoo import get_config_file

MODEL = get_config_file("common/models/mask_rcnn_safpn_ejhead.py")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_resume")
    json_file, image_root = write_tiny_coco(str(root), num_images=5, seed=1)
    register_coco_instances_checked("test_resume_tiny", json_file, image_root)
    return "test_resume_tiny"


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_resume_equals_uninterrupted_training(tiny_dataset, tmp_path):
    n = 2
    kwargs = dict(model_config=MODEL, max_iter=n, checkpoint_period=n // 2, evaluate=False, seed=3)
    full_dir, resumed_dir = str(tmp_path / "full"), str(tmp_path / "resumed")

    do_train(tiny_lazy_config(tiny_dataset, tiny_dataset, full_dir, **kwargs))

    with pytest.raises(Crash):
        do_train(
            tiny_lazy_config(tiny_dataset, tiny_dataset, resumed_dir, **kwargs),
            extra_hooks=[crash_at(n // 2 - 1)],
        )
    assert not os.path.exists(os.path.join(resumed_dir, "model_final.pth"))
    with open(os.path.join(resumed_dir, "last_checkpoint")) as f:
        assert f.read() == f"model_{n // 2 - 1:07d}.pth"
    do_train(tiny_lazy_config(tiny_dataset, tiny_dataset, resumed_dir, **kwargs), resume=True)

    full = _weights(os.path.join(full_dir, "model_final.pth"))
    resumed = _weights(os.path.join(resumed_dir, "model_final.pth"))
    half = _weights(os.path.join(resumed_dir, f"model_{n // 2 - 1:07d}.pth"))
    assert full["iteration"] == resumed["iteration"] == n - 1
    assert full["model"].keys() == resumed["model"].keys()
    # Bit-exact: every weight and buffer, and the optimizer's momentum buffers.
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    full_optim, resumed_optim = full["trainer"]["optimizer"], resumed["trainer"]["optimizer"]
    assert full_optim["state"].keys() == resumed_optim["state"].keys()
    for k, v in full_optim["state"].items():
        assert torch.equal(v["momentum_buffer"], resumed_optim["state"][k]["momentum_buffer"]), k
    # The second half did train (the comparison is not between two untouched models).
    changed = [k for k, v in half["model"].items() if not torch.equal(v, full["model"][k])]
    assert len(changed) > 10


def _failing_torch_save(data, f):
    f.write(b"PARTIAL")  # half a file, then the process "dies"
    raise RuntimeError("simulated crash in torch.save")


def test_crash_while_saving_keeps_last_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    with mock.patch("torch.save", _failing_torch_save):
        with pytest.raises(RuntimeError, match="simulated crash"):
            checkpointer.save("model_0000003")

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    fresh = torch.nn.Linear(3, 2)
    AtomicDetectionCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, good[k]), k


def test_plain_checkpointer_would_leave_a_truncated_file(tmp_path):
    # Control for the test above: the same simulated crash breaks Detectron2's checkpointer.
    checkpointer = DetectionCheckpointer(torch.nn.Linear(3, 2), str(tmp_path))
    with mock.patch("fvcore.common.checkpoint.torch.save", _failing_torch_save):
        with pytest.raises(RuntimeError, match="simulated crash"):
            checkpointer.save("model_0000003")
    with open(tmp_path / "model_0000003.pth", "rb") as f:
        assert f.read() == b"PARTIAL"


def test_atomic_last_checkpoint_crash(tmp_path):
    checkpointer = AtomicDetectionCheckpointer(torch.nn.Linear(3, 2), str(tmp_path))
    checkpointer.save("model_0000001")
    real_replace = os.replace

    def failing_replace(src, dst):
        if dst.endswith("last_checkpoint"):
            raise OSError("simulated crash while tagging")
        return real_replace(src, dst)

    with mock.patch("sa_ejhead.engine.checkpoint.os.replace", failing_replace):
        with pytest.raises(OSError, match="simulated crash"):
            checkpointer.save("model_0000003")
    # The new checkpoint is complete; last_checkpoint still names the previous, valid one.
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    torch.load(tmp_path / "model_0000003.pth", weights_only=False)
