"""The engine: arguments, dataset registration, sampler/seed resumption, yacs Trainer, errors."""

import argparse
import itertools
import os
import random

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase, SimpleTrainer

from sa_ejhead.engine import (
    IterationSeeder,
    ResumableTrainingSampler,
    Trainer,
    check_device,
    create_ddp_model,
    default_argument_parser,
    load_yacs_config,
    parse_coco_dataset_spec,
    register_datasets_from_args,
)
from sa_ejhead.engine.testing import tiny_yacs_config, write_tiny_coco


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_engine")
    return write_tiny_coco(str(root), num_images=3, seed=4)


# --- arguments and --coco-dataset -----------------------------------------------------------


def test_parser_has_detectron2_options_and_repeatable_coco_dataset():
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            "c.py",
            "--resume",
            "--num-gpus",
            "2",
            "--num-machines",
            "3",
            "--machine-rank",
            "1",
            "--dist-url",
            "tcp://1.2.3.4:5",
            "--coco-dataset",
            "a=x.json,imgs",
            "--coco-dataset",
            "b=y.json,imgs2",
            "train.max_iter=3",
        ]
    )
    assert args.resume and not args.eval_only
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (2, 3, 1)
    assert args.dist_url == "tcp://1.2.3.4:5"
    assert args.coco_dataset == ["a=x.json,imgs", "b=y.json,imgs2"]
    assert args.opts == ["train.max_iter=3"]
    assert default_argument_parser().parse_args([]).coco_dataset == []


def test_parse_coco_dataset_spec(tiny_coco):
    json_file, image_root = tiny_coco
    assert parse_coco_dataset_spec(f"mine={json_file},{image_root}") == (
        "mine",
        json_file,
        image_root,
    )
    bad = {
        f"{json_file},{image_root}": "missing 'NAME='",
        f"=x.json,{image_root}": "missing 'NAME='",
        f"mine={json_file}": "exactly one ','",
        f"mine={json_file},{image_root},extra": "exactly one ','",
        f"mine=,{image_root}": "exactly one ','",
        f"mine=nope.json,{image_root}": "annotation file 'nope.json' does not exist",
        f"mine={json_file},/no/such/dir": "image folder '/no/such/dir' does not exist",
    }
    for spec, message in bad.items():
        with pytest.raises(ValueError, match="NAME=ANNOTATIONS.json,IMAGE_DIR|does not exist") as e:
            parse_coco_dataset_spec(spec)
        assert message in str(e.value) and "--coco-dataset" in str(e.value), spec


def test_register_datasets_from_args(tiny_coco):
    json_file, image_root = tiny_coco
    spec = f"test_engine_reg={json_file},{image_root}"
    args = argparse.Namespace(coco_dataset=[spec])
    assert register_datasets_from_args(args) == ["test_engine_reg"]
    meta = MetadataCatalog.get("test_engine_reg")
    assert meta.thing_classes == ["box", "blob"]
    assert meta.evaluator_type == "coco"
    assert len(DatasetCatalog.get("test_engine_reg")) == 3
    # Registering again with the same files is a no-op (each launched process registers).
    assert register_datasets_from_args(args) == ["test_engine_reg"]
    other = os.path.join(os.path.dirname(json_file), "other.json")
    with open(json_file) as src, open(other, "w") as dst:
        dst.write(src.read())
    with pytest.raises(ValueError, match="already registered with other files"):
        register_datasets_from_args(
            argparse.Namespace(coco_dataset=[f"test_engine_reg={other},{image_root}"])
        )
    assert register_datasets_from_args(argparse.Namespace()) == []


# --- resumable sampler and per-iteration seeds ------------------------------------------------


def test_resumable_sampler_continues_the_stream():
    full = list(itertools.islice(iter(TrainingSampler(7, seed=11)), 40))
    sampler = ResumableTrainingSampler(7, seed=11)
    assert list(itertools.islice(iter(sampler), 40)) == full  # same stream as Detectron2's
    sampler.set_start(13)
    assert list(itertools.islice(iter(sampler), 27)) == full[13:]
    sampler.set_start(3, seed=12)
    other = list(itertools.islice(iter(TrainingSampler(7, seed=12)), 10))
    assert list(itertools.islice(iter(sampler), 7)) == other[3:]
    with pytest.raises(ValueError, match=">= 0"):
        sampler.set_start(-1)


class _FakeTrainer:
    def __init__(self, it):
        self.iter = it


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_iteration_seeder_depends_on_seed_and_iteration_only():
    sampler = ResumableTrainingSampler(5, seed=1)
    hook = IterationSeeder(seed=7, sampler=sampler, samples_per_iter=2)
    hook.trainer = _FakeTrainer(3)
    hook.before_train()  # a run resumed at iteration 3 skips 3 x 2 samples, with seed 7
    expected = list(itertools.islice(iter(TrainingSampler(5, seed=7)), 6, 16))
    assert list(itertools.islice(iter(sampler), 10)) == expected

    hook.before_step()
    a = _draws()
    _draws()  # whatever ran before does not matter
    hook.before_step()
    assert _draws() == a
    hook.trainer = _FakeTrainer(4)
    hook.before_step()
    assert _draws() != a

    other = IterationSeeder(seed=8)
    other.load_state_dict(hook.state_dict())  # the seed travels in the checkpoint
    other.trainer = _FakeTrainer(3)
    other.before_step()
    assert _draws() == a


# --- DDP, device, yacs --------------------------------------------------------------------


def test_single_process_ddp_is_the_model():
    model = torch.nn.Linear(2, 2)
    assert create_ddp_model(model, broadcast_buffers=False) is model


def test_check_device_names_the_fix():
    assert check_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="train.device=cpu"):
            check_device("cuda")


def test_yacs_unknown_key_names_the_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("MODEL:\n  SAFPN:\n    MODE: td\n  EJ_HEAD:\n    INTERLEAVE: False\n")
    cfg = load_yacs_config(str(good), ["SOLVER.MAX_ITER", "7"])
    assert (cfg.MODEL.SAFPN.MODE, cfg.MODEL.EJ_HEAD.INTERLEAVE) == ("td", False)
    assert cfg.SOLVER.MAX_ITER == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  SAFPN:\n    MODEE: td\n")
    with pytest.raises(KeyError, match="Non-existent config key: MODEL.SAFPN.MODEE") as e:
        load_yacs_config(str(bad))
    assert str(bad) in str(e.value)
    with pytest.raises(KeyError, match="SOLVER.MAX_ITERS in the command-line overrides"):
        load_yacs_config(str(good), ["SOLVER.MAX_ITERS", "7"])


def test_yacs_trainer_trains_and_resumes_exactly(tiny_coco, tmp_path):
    """DefaultTrainer subclass: SA-FPN + EJ-Head, atomic checkpoints, exact resume."""
    json_file, image_root = tiny_coco
    register_datasets_from_args(
        argparse.Namespace(coco_dataset=[f"test_engine_yacs={json_file},{image_root}"])
    )

    def run(output_dir, resume, crash_after=None, evaluate=False):
        cfg = tiny_yacs_config("test_engine_yacs", "test_engine_yacs", output_dir, max_iter=3)
        cfg.SOLVER.STEPS = (2,)
        cfg.SOLVER.CHECKPOINT_PERIOD = 1
        if not evaluate:
            cfg.DATASETS.TEST = ()
        trainer = Trainer(cfg)
        assert isinstance(trainer._trainer, SimpleTrainer)
        if crash_after is not None:
            trainer.register_hooks([_CrashAfter(crash_after)])
        trainer.resume_or_load(resume=resume)
        trainer.train()
        return trainer

    full = run(str(tmp_path / "full"), resume=False, evaluate=True)
    assert full.cfg.MODEL.ROI_HEADS.NAME == "EJROIHeads"
    assert type(full.checkpointer).__name__ == "AtomicDetectionCheckpointer"
    # Evaluation at the end of training: build_evaluator -> COCOEvaluator, boxes and masks.
    assert set(full._last_eval_results) == {"bbox", "segm"}
    assert "AP" in full._last_eval_results["segm"]

    part = str(tmp_path / "part")
    with pytest.raises(_Crash):
        run(part, resume=False, crash_after=0)
    resumed = run(part, resume=True)
    assert resumed.start_iter == 1
    a = torch.load(os.path.join(str(tmp_path / "full"), "model_final.pth"), weights_only=False)
    b = torch.load(os.path.join(part, "model_final.pth"), weights_only=False)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert not [f for f in os.listdir(part) if f.endswith(".tmp")]


class _Crash(Exception):
    pass


class _CrashAfter(HookBase):
    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise _Crash()
