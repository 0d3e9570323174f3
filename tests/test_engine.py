"""The engine: arguments, dataset registration, sampler/seed resumption, yacs Trainer, errors."""

import argparse
import glob
import itertools
import os
import random
import re

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

from sa_ejhead.data import (
    CheckedDatasetMapper,
    DatasetFileNotFoundError,
    DatasetImageError,
    register_coco_instances_checked,
)
from sa_ejhead.engine import (
    IterationSeeder,
    ResumableTrainingSampler,
    Trainer,
    check_device,
    default_argument_parser,
    load_lazy_config,
    load_yacs_config,
    parse_coco_dataset_spec,
    register_datasets_from_args,
)
from _helpers import (
    Crash,
    crash_at,
    tiny_yacs_config,
    write_tiny_coco,
)
from sa_ejhead.errors import ConfigError
from sa_ejhead.evaluation import COCOEvaluator


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


def test_check_device_names_the_fix():
    assert check_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device=cpu"):
            check_device("cuda")


def test_yacs_trainer_refuses_several_cpu_processes_before_building(tmp_path, monkeypatch):
    """Detectron2's DefaultTrainer gives DDP the process's device id, which PyTorch refuses for a
    CPU model: a one-line error instead, before anything is built."""
    monkeypatch.setattr(Trainer, "build_model", lambda cfg: pytest.fail("the model was built"))
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    with pytest.raises(ConfigError, match=r"several processes \(--num-gpus 2 with MODEL.DEVICE"):
        Trainer(tiny_yacs_config("unused", "unused", str(tmp_path)))


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


@pytest.mark.slow
def test_yacs_trainer_trains_and_resumes_exactly(tiny_coco, tmp_path):
    """DefaultTrainer subclass: SA-FPN + EJ-Head, atomic checkpoints, exact resume."""
    json_file, image_root = tiny_coco
    register_datasets_from_args(
        argparse.Namespace(coco_dataset=[f"test_engine_yacs={json_file},{image_root}"])
    )

    def run(output_dir, resume, crash_in=None, evaluate=False):
        cfg = tiny_yacs_config("test_engine_yacs", "test_engine_yacs", output_dir, max_iter=2)
        cfg.SOLVER.STEPS = (1,)
        cfg.SOLVER.CHECKPOINT_PERIOD = 1
        if not evaluate:
            cfg.DATASETS.TEST = ()
        trainer = Trainer(cfg)
        assert isinstance(trainer._trainer, SimpleTrainer)
        if crash_in is not None:
            trainer.register_hooks([crash_at(crash_in)])
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
    with pytest.raises(Crash):
        run(part, resume=False, crash_in=0)
    resumed = run(part, resume=True)
    assert resumed.start_iter == 1
    a = torch.load(os.path.join(str(tmp_path / "full"), "model_final.pth"), weights_only=False)
    b = torch.load(os.path.join(part, "model_final.pth"), weights_only=False)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert not [f for f in os.listdir(part) if f.endswith(".tmp")]


def test_yacs_trainer_data_errors_name_the_image_file(tmp_path):
    """The yacs Trainer's train and test loaders map with CheckedDatasetMapper: a corrupt or
    missing image raises an error naming its file; its evaluator is our COCOEvaluator."""
    json_file, image_root = write_tiny_coco(str(tmp_path / "data"), num_images=2, seed=1)
    register_coco_instances_checked("test_engine_bad_images", json_file, image_root)
    try:
        cfg = tiny_yacs_config(
            "test_engine_bad_images", "test_engine_bad_images", str(tmp_path / "out")
        )
        mapper = CheckedDatasetMapper(cfg, is_train=True)
        assert mapper.use_instance_mask and mapper.instance_mask_format == "polygon"
        assert isinstance(Trainer.build_evaluator(cfg, "test_engine_bad_images"), COCOEvaluator)
        for name in sorted(os.listdir(image_root)):  # truncated files (validation still passes)
            path = os.path.join(image_root, name)
            with open(path, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 3])
        image = r"cannot read image .*{}\.png \(image_id {}\)"
        loaders = [Trainer.build_train_loader(cfg)]  # with a ResumableTrainingSampler
        cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
        loaders.append(Trainer.build_train_loader(cfg))  # another sampler: Detectron2's
        assert isinstance(loaders[0].resumable_sampler, ResumableTrainingSampler)
        assert loaders[1].resumable_sampler is None
        for loader in loaders:
            with pytest.raises(DatasetImageError, match=image.format(r"000[01]", "[12]")):
                next(iter(loader))
        test_loader = Trainer.build_test_loader(cfg, "test_engine_bad_images")
        with pytest.raises(DatasetImageError, match=image.format("0000", 1)):
            next(iter(test_loader))
        os.remove(os.path.join(image_root, "0000.png"))
        with pytest.raises(DatasetFileNotFoundError, match=r"image file not found: .*0000\.png"):
            next(iter(test_loader))
    finally:
        DatasetCatalog.remove("test_engine_bad_images")
        MetadataCatalog.remove("test_engine_bad_images")


# --- LazyConfig overrides -----------------------------------------------------------------------

_OVERRIDES_CONFIG = """
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.modeling.roi_heads import StandardROIHeads

train = dict(max_iter=10, output_dir="out", checkpointer=dict(period=5, max_to_keep=1))
mapper = L(DatasetMapper)(
    is_train=True,
    augmentations=[L(T.ResizeShortestEdge)(short_edge_length=64, max_size=128)],
    image_format="BGR",
)
roi_heads = L(StandardROIHeads)(box_in_features=["p2"])
"""


@pytest.fixture
def overrides_config(tmp_path):
    path = tmp_path / "overrides_config.py"
    path.write_text(_OVERRIDES_CONFIG)
    return str(path)


def test_lazy_override_typo_names_the_key_the_file_and_the_closest_key(overrides_config):
    with pytest.raises(KeyError, match=r"'train.max_iterr'.*Did you mean 'train.max_iter'\?") as e:
        load_lazy_config(overrides_config, ["train.max_iter=3", "train.max_iterr=5"])
    assert overrides_config in str(e.value) and "'+train.max_iterr=5'" in str(e.value)
    for typo, closest in [
        ("trian.max_iter=5", "train.max_iter"),  # a typo before the last part
        ("train.checkpointer.perod=2", "train.checkpointer.period"),  # a sub-key
        ("mapper.augmentations.0.max_sise=96", "mapper.augmentations.0.max_size"),
        ("mapper.instance_mask_formt=bitmask", "mapper.instance_mask_format"),  # an argument
        ("roi_heads.num_clases=3", "roi_heads.num_classes"),  # ROIHeads' via **kwargs
    ]:
        with pytest.raises(KeyError, match="has no key") as e:
            load_lazy_config(overrides_config, [typo])
        assert typo.split("=")[0] in str(e.value) and overrides_config in str(e.value)
        assert f"Did you mean {closest!r}?" in str(e.value)
    # A sub-key of a value, an item past the end of a list: errors, and "+" is no way out.
    with pytest.raises(KeyError, match="'train.max_iter' is not a config node") as e:
        load_lazy_config(overrides_config, ["train.max_iter.x=1"])
    assert "+" not in str(e.value).split("(")[-1]
    with pytest.raises(KeyError, match="is a list of 1 items, it has no item '1'"):
        load_lazy_config(overrides_config, ["mapper.augmentations.1.max_size=96"])


def test_lazy_override_prefixes_as_in_hydra(overrides_config):
    """``+`` adds a key (or merges into a mapping), ``++`` sets one either way, ``~`` deletes."""
    cfg = load_lazy_config(
        overrides_config,
        ["+train.new_key=1", "train.new_key=2", "+train.extra.deep=3", "++train.other=4"],
    )
    assert (cfg.train.new_key, cfg.train.extra.deep, cfg.train.other) == (2, 3, 4)
    cfg = load_lazy_config(
        overrides_config,
        ["++train.max_iter=7", "+mapper.recompute_boxes=1", "+train.checkpointer={extra: 1}"],
    )
    assert cfg.train.max_iter == 7 and cfg.mapper.recompute_boxes == 1
    assert dict(cfg.train.checkpointer) == {"period": 5, "max_to_keep": 1, "extra": 1}
    with pytest.raises(KeyError, match=r"already has the key 'train.max_iter'.*'\+\+train"):
        load_lazy_config(overrides_config, ["+train.max_iter=3"])
    cfg = load_lazy_config(
        overrides_config,
        ["~train.output_dir", "~train.checkpointer.period=5", "~mapper.augmentations.0"],
    )
    assert "output_dir" not in cfg.train and dict(cfg.train.checkpointer) == {"max_to_keep": 1}
    assert len(cfg.mapper.augmentations) == 0
    with pytest.raises(ConfigError, match=r"no key 'train.outptu_dir'.*mean 'train.output_dir'\?$"):
        load_lazy_config(overrides_config, ["~train.outptu_dir"])
    with pytest.raises(ConfigError, match="'train.max_iter' is 10, not 3: nothing deleted"):
        load_lazy_config(overrides_config, ["~train.max_iter=3"])
    with pytest.raises(ConfigError, match=r"'train.max_iter=1,2': a sweep is not a value"):
        load_lazy_config(overrides_config, ["train.max_iter=1,2"])


def test_lazy_override_valid_keys(overrides_config):
    cfg = load_lazy_config(
        overrides_config,
        [
            "train.max_iter=3",
            "train.checkpointer.period=2",
            "train.checkpointer={max_to_keep: 4}",  # a mapping: merged into the existing one
            "mapper.augmentations.0.max_size=96",  # a list item by its index
            "mapper.instance_mask_format=bitmask",  # an argument of the target left at default
            "roi_heads.num_classes=3",  # an argument of ROIHeads, reached by **kwargs
            "train.seed=4",  # read by the engine with a default; common/train.py has none
        ],
    )
    assert cfg.train.max_iter == 3 and cfg.train.seed == 4
    assert dict(cfg.train.checkpointer) == {"period": 2, "max_to_keep": 4}
    assert cfg.mapper.augmentations[0].max_size == 96
    assert cfg.mapper.instance_mask_format == "bitmask" and cfg.roi_heads.num_classes == 3


@pytest.mark.slow
def test_lazy_overrides_of_the_repository_callers():
    """The overrides the ablation runner, the demo test and the tools pass still apply."""
    from sa_ejhead.model_zoo import get_config_file, get_config_root

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ablation = [
        "train.max_iter=5",
        "train.seed=1",
        "train.output_dir=/tmp/unused",
        "train.eval_period=0",
        "train.device=cpu",
        "train.checkpointer.period=100",
    ]
    configs = sorted(glob.glob(os.path.join(repo, "projects", "cpu_ablation", "configs", "*.py")))
    # each ablation config but its roots takes ``train`` from another (``from .baseline import
    # ..., train``): the roots stand for all
    configs = [
        c
        for c in configs
        if not os.path.basename(c).startswith("_")
        and not re.search(r"^from \..* import .*\btrain\b", open(c).read(), re.M)
    ]
    configs += sorted(glob.glob(os.path.join(get_config_root(), "demo", "*.py")))
    assert len(configs) > 2
    for config in configs:
        cfg = load_lazy_config(config, ablation)
        assert (cfg.train.max_iter, cfg.train.seed, cfg.train.checkpointer.period) == (5, 1, 100)
    demo = load_lazy_config(
        get_config_file("demo/sa_shapes.py"),
        [
            "dataloader.train.dataset.names=a",
            "dataloader.evaluator.dataset_name=b",
            "dataloader.test.num_workers=0",
            "dataloader.train.mapper.augmentations.0.short_edge_length=[80]",
            "lr_multiplier.warmup_length=0.05",
            "model.roi_heads.refinement.bottleneck_channels=64",
        ],
    )
    assert demo.dataloader.train.mapper.augmentations[0].short_edge_length == [80]
    coco = load_lazy_config(
        get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_SAFPN_EJHead_1x.py"),
        ["train.seed=0", "dataloader.train.mapper.instance_mask_format=bitmask"],  # docs/configs.md
    )
    assert coco.train.seed == 0


def test_lazy_override_of_the_wrong_type_names_the_key_and_the_type(overrides_config):
    """Hydra parses ``train.max_iter=abc`` as a string, which Detectron2 would meet only in the
    training loop (``'>=' not supported between 'int' and 'str'``)."""
    for override, expected in [
        ("train.max_iter=abc", "'train.max_iter' expects an integer (it is 10 in config file"),
        ("train.max_iter=1e3", "expects an integer (it is 10 in config file"),
        ("mapper.image_format=3", "expects a string (it is 'BGR' in"),
        ("mapper.image_format=3", "got 3 (int); quote a string: mapper.image_format='3'"),
        ("mapper.is_train=1", "'mapper.is_train' expects a boolean (true or false)"),
        ("roi_heads.box_in_features=true", "expects a list"),
        ("++train.max_iter=x", "expects an integer"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_lazy_config(overrides_config, [override])
        assert str(e.value).startswith(f"Override {override!r}: ") and expected in str(e.value)
        assert overrides_config in str(e.value)
    with pytest.raises(ConfigError, match=r"Override 'train.max_iter=\[1,': cannot parse it"):
        load_lazy_config(overrides_config, ["train.max_iter=[1,"])
    cfg = load_lazy_config(
        overrides_config,
        [
            "train.max_iter=3",
            "mapper.augmentations.0.max_size=null",  # null replaces anything
            "mapper.augmentations.0.short_edge_length=[64,80]",  # one value or several
            "roi_heads.box_in_features=p3",
            "+train.lr=0.1",
            "train.lr=1",  # an integer for a float
            "mapper.image_format='3'",
        ],
    )
    assert cfg.train.max_iter == 3 and cfg.mapper.augmentations[0].max_size is None
    assert cfg.roi_heads.box_in_features == "p3" and cfg.mapper.image_format == "3"
