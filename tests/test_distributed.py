"""Distributed training through Detectron2's ``launch``: 2 CPU processes, gloo backend.

Trains the SA-FPN + EJ-Head model two iterations with DistributedDataParallel
(``find_unused_parameters=False``, as the configs), so that a parameter without gradient or a
state that differs between processes fails the test; then checks that both processes end with
identical weights and that only the main process wrote checkpoints.

The processes are forked from the test's, not spawned as ``launch`` does by default: a spawned
process imports torch and Detectron2 again (5 s each; the test took 15.8 s, 3.4 s forked). What
``launch`` does in them (process group, local group, synchronisation) is the same.
"""

import functools
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
from detectron2.engine import HookBase, launch
from detectron2.utils import comm

from _helpers import write_tiny_coco
from sa_ejhead.model_zoo import get_config_file

MODEL = get_config_file("common/models/mask_rcnn_safpn_ejhead.py")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _DumpParameters(HookBase):
    """Save this process's final parameters (DDP keeps them equal across processes)."""

    def __init__(self, path):
        self.path = path

    def after_train(self):
        model = self.trainer.model
        model = getattr(model, "module", model)
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save({"params": params, "world_size": comm.get_world_size()}, self.path)


def _worker(json_file, image_root, output_dir):
    # Runs in each launched process.
    torch.set_num_threads(1)
    from sa_ejhead.data import register_coco_instances_checked
    from sa_ejhead.engine import do_train
    from _helpers import tiny_lazy_config

    register_coco_instances_checked("test_distributed_tiny", json_file, image_root)
    cfg = tiny_lazy_config(
        "test_distributed_tiny",
        "test_distributed_tiny",
        output_dir,
        model_config=MODEL,
        max_iter=2,
        checkpoint_period=100,
        evaluate=False,
        seed=5,
    )
    assert comm.get_world_size() == 2
    assert torch.distributed.get_backend() == "gloo"
    dump = os.path.join(output_dir, f"rank{comm.get_rank()}.pth")
    do_train(cfg, extra_hooks=[_DumpParameters(dump)])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_cpu_processes_gloo(tmp_path, monkeypatch):
    fork = functools.partial(mp.start_processes, start_method="fork")
    monkeypatch.setattr(mp, "start_processes", fork)
    # launch() picks NCCL when the processes see a GPU: CPU processes only (forked, they see
    # this process's torch.cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    json_file, image_root = write_tiny_coco(str(tmp_path / "data"), num_images=4, seed=2)
    output_dir = str(tmp_path / "out")
    launch(
        _worker,
        num_gpus_per_machine=2,
        dist_url=f"tcp://127.0.0.1:{_free_port()}",
        args=(json_file, image_root, output_dir),
        timeout=timedelta(minutes=3),
    )
    rank0 = torch.load(os.path.join(output_dir, "rank0.pth"), weights_only=False)
    rank1 = torch.load(os.path.join(output_dir, "rank1.pth"), weights_only=False)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["params"].keys() == rank1["params"].keys()
    for k, v in rank0["params"].items():
        assert torch.equal(v, rank1["params"][k]), k
    # Only the main process writes checkpoints; the final one holds the same weights.
    final = torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=False)
    assert final["iteration"] == 1
    for k, v in rank0["params"].items():
        assert torch.equal(v, final["model"][k]), k
    # The SA-FPN + EJ-Head modules took part (and were synchronised).
    assert any(".refinement." in k for k in rank0["params"]), list(rank0["params"])[:20]
    assert any("backbone." in k and "buf" in k.lower() for k in rank0["params"])
