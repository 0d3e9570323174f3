"""Each fault a new user meets stops the tools with one line naming the file, field or key (the
traceback in a log file, or with --debug), and loses nothing written before it (issue 28).

Dataset faults found when a set is registered (all crowd, sizes, 16-bit greyscale) are tested
with the other dataset checks in test_data.py, override types in test_engine.py.
"""

import itertools
import os
import re

import pytest
import torch
from detectron2.engine import HookBase

from torch.multiprocessing import ProcessExitedException
from torch.utils.data import DataLoader

from sa_ejhead.data import DatasetImageError, register_coco_instances_checked
from sa_ejhead.engine import AtomicDetectionCheckpointer, default_argument_parser, do_train
from sa_ejhead.engine import args as engine_args
from sa_ejhead.engine import load_config
from sa_ejhead.engine import lazy as lazy_engine
from sa_ejhead.engine import trainer as yacs_engine
from sa_ejhead.engine.train_loop import SimpleTrainer
from sa_ejhead.errors import (
    CheckpointError,
    ConfigError,
    DiskFullError,
    SAEJHeadError,
    TrainingDivergedError,
    errors_logged_in,
    run_tool,
)
from _helpers import (
    crash_at,
    listen,
    run_tool_script,
    tiny_lazy_config,
    tiny_yacs_config,
    write_tiny_coco,
    write_tiny_lazy_config_file,
)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """A registered tiny training set: ``(name, json_file, image_root)``."""
    json_file, image_root = write_tiny_coco(str(tmp_path_factory.mktemp("errors")), 3, seed=2)
    register_coco_instances_checked("test_errors_tiny", json_file, image_root)
    return "test_errors_tiny", json_file, image_root


@pytest.fixture(scope="module")
def lazy_config(tmp_path_factory):
    """A tiny LazyConfig file for the tools (training set ``test_errors_tool``, no evaluator)."""
    folder = tmp_path_factory.mktemp("errors_config")
    return write_tiny_lazy_config_file(
        str(folder / "tiny.py"),
        train_dataset="test_errors_tool",
        test_dataset="test_errors_tool",
        output_dir=str(folder / "unused"),
        evaluate=False,
    )


# What logging prints when a handler writes to a stream that was closed: Detectron2's loggers keep
# the sys.stdout of the test that set them up, which pytest closed since (not in a real run).
_LOGGING_ERROR = re.compile(r"^--- Logging error ---$.*?^Arguments: .*?$", re.M | re.S)


def _error_line(capsys, tool):
    """The tool's one error line on stderr; checks that stderr holds no traceback."""
    err = _LOGGING_ERROR.sub("", capsys.readouterr().err)
    assert "Traceback" not in err
    (line,) = [l for l in err.splitlines() if l.startswith(f"{tool}: error: ")]
    return line


def _log_file(line):
    return line.split("(traceback in ")[1].split("; --debug shows it)")[0]


class _NotBuilt(Exception):
    pass


def _refuse(*args, **kwargs):
    raise _NotBuilt("the model was built")


# --- checkpoints ------------------------------------------------------------------------------


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _two_checkpoints(folder):
    """model_0000001.pth (weights 1) and model_0000003.pth (weights 3, named by last_checkpoint)."""
    model = torch.nn.Linear(3, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(folder))
    for it in (1, 3):
        with torch.no_grad():
            model.weight.fill_(it)
        checkpointer.save(f"model_{it:07d}", iteration=it)
    return folder / "model_0000001.pth", folder / "model_0000003.pth"


def _resume(folder):
    model = torch.nn.Linear(3, 2)
    extra = AtomicDetectionCheckpointer(model, str(folder)).resume_or_load("", resume=True)
    return extra.get("iteration"), model.weight[0, 0].item()


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, caplog, damage):
    older, newest = _two_checkpoints(tmp_path)
    if damage == "truncated":
        _truncate(newest)
    else:
        os.remove(newest)
    with listen(caplog, "sa_ejhead.engine.checkpoint"):
        assert _resume(tmp_path) == (1, 1.0)
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    message = record.getMessage()
    assert f"the newest checkpoint {newest} " in message and f"resuming from {older}," in message
    assert ("cannot be read" if damage == "truncated" else "does not exist") in message


def test_resume_without_a_complete_checkpoint_stops_with_one_line(tmp_path):
    older, newest = _two_checkpoints(tmp_path)
    _truncate(newest)
    _truncate(older)
    with pytest.raises(CheckpointError) as e:
        _resume(tmp_path)  # never from scratch
    message = str(e.value)
    assert message.startswith(f"--resume: no complete checkpoint in {tmp_path} (")
    assert "model_0000003.pth cannot be read (RuntimeError: " in message
    assert "model_0000001.pth cannot be read" in message and "\n" not in message
    assert os.path.getsize(older) > 0 and os.path.getsize(newest) > 0  # nothing deleted


@pytest.mark.slow
def test_resumed_training_continues_from_the_previous_checkpoint(tiny_set, tmp_path):
    """do_train: model_final.pth (newest) truncated; --resume continues after iteration 1."""
    name = tiny_set[0]
    kwargs = dict(checkpoint_period=1, evaluate=False)
    do_train(tiny_lazy_config(name, name, str(tmp_path), max_iter=2, **kwargs))
    with open(tmp_path / "last_checkpoint") as f:
        assert f.read() == "model_final.pth"
    _truncate(tmp_path / "model_final.pth")

    class FirstIteration(HookBase):
        def before_train(self):
            self.start_iter = self.trainer.start_iter

    first = FirstIteration()
    cfg = tiny_lazy_config(name, name, str(tmp_path), max_iter=3, **kwargs)
    do_train(cfg, resume=True, extra_hooks=[first])
    assert first.start_iter == 2  # model_0000001.pth holds iteration 1
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["iteration"] == 2


def test_eval_only_with_a_missing_checkpoint_stops_before_building(
    lazy_config, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(lazy_engine, "build_lazy_model", _refuse)
    missing = str(tmp_path / "nope.pth")
    argv = ["--config-file", lazy_config, "--eval-only", f"train.init_checkpoint={missing}"]
    argv += [f"train.output_dir={tmp_path / 'out'}"]
    assert run_tool_script("lazyconfig_train_net.py", argv, monkeypatch) == 1
    line = _error_line(capsys, "lazyconfig_train_net")
    assert f"error: train.init_checkpoint={missing!r}: no such checkpoint file (" in line
    # the traceback goes to the run's output folder
    assert _log_file(line) == str(tmp_path / "out" / "lazyconfig_train_net-error.log")

    monkeypatch.setattr(yacs_engine.Trainer, "build_model", _refuse)
    yaml_file = tmp_path / "tiny.yaml"
    yaml_file.write_text(tiny_yacs_config("unused", "unused", str(tmp_path / "yacs")).dump())
    argv = ["--config-file", str(yaml_file), "--eval-only", "MODEL.WEIGHTS", missing]
    assert run_tool_script("train_net.py", argv, monkeypatch) == 1
    assert f"error: MODEL.WEIGHTS={missing!r}: no such checkpoint file (" in _error_line(
        capsys, "train_net"
    )

    # training: train.init_checkpoint is checked before the model is built too
    cfg = tiny_lazy_config("unused", "unused", str(tmp_path / "train"), evaluate=False)
    cfg.train.init_checkpoint = missing
    with pytest.raises(CheckpointError, match="train.init_checkpoint="):
        do_train(cfg)


# --- configs ----------------------------------------------------------------------------------


def test_a_config_file_that_does_not_exist(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "nope")
    for tool, suffix in [("lazyconfig_train_net", ".py"), ("train_net", ".yaml")]:
        argv = ["--config-file", missing + suffix]
        assert run_tool_script(f"{tool}.py", argv, monkeypatch) == 1
        line = _error_line(capsys, tool)
        assert f"error: config file {missing + suffix!r} does not exist (--config-file) (" in line
    with pytest.raises(ConfigError, match="does not exist"):  # tools/demo.py and benchmark.py
        load_config(missing + ".yaml")


def test_an_override_of_the_wrong_type_stops_before_anything_runs(
    lazy_config, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(lazy_engine, "build_lazy_model", _refuse)
    argv = ["--config-file", lazy_config, "train.max_iter=abc"]
    argv += [f"train.output_dir={tmp_path / 'out'}"]
    assert run_tool_script("lazyconfig_train_net.py", argv, monkeypatch) == 1
    line = _error_line(capsys, "lazyconfig_train_net")
    assert (
        "error: Override 'train.max_iter=abc': 'train.max_iter' expects an integer (it is 4 in "
        f"config file {lazy_config!r}), got the string 'abc' ("
    ) in line
    assert not os.path.exists(tmp_path / "out")  # before anything ran


# --- training ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_divergence_names_the_iteration_and_the_last_checkpoint(tiny_set, tmp_path):
    """Detectron2's RPN finds the non-finite boxes first (lr 1e4)."""
    name = tiny_set[0]
    cfg = tiny_lazy_config(name, name, str(tmp_path), max_iter=6, checkpoint_period=1)
    cfg.optimizer.lr = 1e4
    with pytest.raises(TrainingDivergedError) as e:
        do_train(cfg)
    assert isinstance(e.value, FloatingPointError)
    it = int(re.match(r"training diverged at iteration (\d+) \(", str(e.value)).group(1))
    assert "Predicted boxes or scores contain Inf/NaN" in str(e.value)
    last = tmp_path / f"model_{it - 1:07d}.pth"
    assert f"the last checkpoint written before it is {last}. Lower the learning" in str(e.value)
    assert torch.load(last, weights_only=False)["iteration"] == it - 1  # kept, complete


def test_yacs_divergence_names_the_iteration(tiny_set, tmp_path):
    """The yacs Trainer stops on divergence with the same error (its run_step)."""
    name = tiny_set[0]
    cfg = tiny_yacs_config(name, name, str(tmp_path), max_iter=6, sa_ejhead=False)
    cfg.SOLVER.BASE_LR, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.DATASETS.TEST = 1e6, 100, ()
    with pytest.raises(TrainingDivergedError) as e:
        yacs_engine.Trainer(cfg).train()
    assert re.match(
        r"training diverged at iteration \d \(.*no checkpoint was written", str(e.value)
    )


def test_divergence_found_by_the_loss_check():
    """SimpleTrainer's check of the loss: a model whose loss is NaN from the first iteration."""

    class NaNLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, data):
            return {"loss": self.w * float("nan")}

    model = NaNLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, itertools.repeat([{}]), optimizer)
    with pytest.raises(TrainingDivergedError) as e:
        trainer.train(0, 2)
    assert str(e.value).startswith(
        "training diverged at iteration 0 (FloatingPointError: Loss became infinite or NaN at "
        "iteration=0!); no checkpoint was written before it."
    )


class _Stop(SAEJHeadError):
    pass


@pytest.mark.slow
def test_no_evaluation_after_a_failed_last_iteration(tiny_set, tmp_path, monkeypatch):
    """Detectron2's EvalHook evaluates after a failure in the last iteration, whose error then
    follows the first one."""
    evaluated = []
    monkeypatch.setattr(lazy_engine, "do_test", lambda cfg, model: evaluated.append(1) or {})
    name = tiny_set[0]
    with pytest.raises(_Stop):
        do_train(
            tiny_lazy_config(name, name, str(tmp_path), max_iter=2),
            extra_hooks=[crash_at(1, _Stop, "before_step")],
        )
    assert evaluated == []
    do_train(tiny_lazy_config(name, name, str(tmp_path / "ok"), max_iter=2))  # evaluated
    assert evaluated == [1]


def test_disk_full_while_saving(tmp_path):
    """The real ENOSPC of ``torch.save``, from /dev/full behind the temporary file's name."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    model = torch.nn.Linear(3, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    os.symlink("/dev/full", tmp_path / "model_0000003.pth.tmp")
    with pytest.raises(DiskFullError) as e:
        checkpointer.save("model_0000003")
    assert isinstance(e.value, OSError)
    assert str(e.value).startswith(
        f"no space left on the device of {tmp_path} while writing model_0000003.pth ("
    )
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    torch.load(tmp_path / "model_0000001.pth", weights_only=False)


# --- data ---------------------------------------------------------------------------------------


def _kept(kept, item):
    kept.append(item)
    return item


@pytest.mark.slow
def test_a_corrupt_image_met_by_a_data_loader_worker(
    lazy_config, tiny_set, tmp_path, monkeypatch, capsys
):
    _, json_file, image_root = tiny_set
    images = tmp_path / "images"
    images.mkdir()
    for name in os.listdir(image_root):
        with open(os.path.join(image_root, name), "rb") as f:
            data = f.read()
        with open(images / name, "wb") as f:
            f.write(data[: len(data) // 3])  # truncated: the header is read at registration
    out = tmp_path / "out"
    argv = [
        "--config-file",
        lazy_config,
        "--coco-dataset",
        f"test_errors_tool={json_file},{images}",
    ]
    argv += ["dataloader.train.mapper._target_=sa_ejhead.data.CheckedDatasetMapper"]
    argv += ["dataloader.train.num_workers=1", f"train.output_dir={out}"]
    # The failed training leaves the loader's iterator behind, unreferenced but not freed: left
    # to the collector (conftest's gc.collect after each test) its shutdown waited out the 5 s
    # worker-join timeout (measured); shut down here, the idle worker exits in 0.05 s.
    iterators, get_iterator = [], DataLoader._get_iterator
    monkeypatch.setattr(
        DataLoader, "_get_iterator", lambda self: _kept(iterators, get_iterator(self))
    )
    try:
        assert run_tool_script("lazyconfig_train_net.py", argv, monkeypatch) == 1
    finally:
        for iterator in iterators:
            iterator._shutdown_workers()
    line = _error_line(capsys, "lazyconfig_train_net")
    assert re.fullmatch(
        r"lazyconfig_train_net: error: cannot read image .*images/000\d\.png \(image_id \d\): "
        r"OSError: image file is truncated \(traceback in .*; --debug shows it\)",
        line,
    )
    assert _log_file(line) == str(out / "lazyconfig_train_net-error.log")
    assert "Raised in a data-loader worker process:" in open(_log_file(line)).read()
    with open(out / "log.txt") as f:  # Detectron2's "Exception during training" is one line too
        assert "Traceback" not in f.read()


# --- the error line and its log -----------------------------------------------------------------


def test_one_error_hierarchy():
    """Every project error is in sa_ejhead.errors (the dataset ones importable from sa_ejhead.data
    too), with its one-line message and the standard type it stands for."""
    import sa_ejhead.data
    import sa_ejhead.errors

    for name in ("DatasetError", "DatasetFormatError", "DatasetFileNotFoundError"):
        assert getattr(sa_ejhead.data, name) is getattr(sa_ejhead.errors, name)
    for error, standard in [
        (ConfigError("'x': no"), KeyError),
        (CheckpointError("x.pth: no", file="x.pth", reason="no"), OSError),
        (DatasetImageError("x.png: no", file="x.png"), OSError),
        (TrainingDivergedError("x: no"), FloatingPointError),
    ]:
        assert isinstance(error, SAEJHeadError) and isinstance(error, standard)
        assert str(error).endswith(": no")


def test_the_traceback_goes_to_the_run_folder_or_a_new_file(tmp_path, capsys):
    def bad_input():
        raise DatasetImageError("x.png: bad")

    lines = []
    for _ in range(2):
        assert run_tool(bad_input, tool="x") == 1
        lines.append(capsys.readouterr().err.strip())
    logs = [_log_file(line) for line in lines]
    assert logs[0] != logs[1]  # two runs on one machine do not overwrite each other's log
    for log in logs:
        assert os.path.basename(log).startswith("x-error-") and "x.png: bad" in open(log).read()
        os.remove(log)

    def in_run_folder():
        with errors_logged_in(str(tmp_path)):
            bad_input()

    assert run_tool(in_run_folder, tool="x") == 1
    assert _log_file(capsys.readouterr().err) == str(tmp_path / "x-error.log")


def test_a_launched_process_hands_its_error_to_the_parent(tmp_path, monkeypatch):
    """--num-gpus 2: each process of Detectron2's launch saves its project error, and the parent
    re-raises the one of the process that failed first (torch would re-raise an exception made
    of the process's formatted traceback)."""
    args = default_argument_parser().parse_args(["--num-gpus", "2"])

    def main(args):
        raise DatasetImageError("x.png: bad", file="x.png")

    with pytest.raises(SystemExit) as e:  # in a launched process (local rank 0)
        engine_args._run_tool_main(main, False, str(tmp_path), args)
    assert e.value.code == 1 and os.listdir(tmp_path) == ["0.pkl"]

    def launch(*a, **k):  # the parent's view of that process's exit
        raise ProcessExitedException("process 0 terminated with exit code 1", 0, 1234, 1)

    monkeypatch.setattr(engine_args, "launch", launch)
    with pytest.raises(DatasetImageError) as e:
        engine_args._launch(main, args, str(tmp_path))
    assert str(e.value) == "x.png: bad" and e.value.file == "x.png"
    assert "Raised in the launched process of local rank 0" in e.value.__notes__[0]
    os.remove(tmp_path / "0.pkl")  # not a project error: torch's own exception goes on
    with pytest.raises(ProcessExitedException):
        engine_args._launch(main, args, str(tmp_path))
