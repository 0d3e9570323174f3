"""Training and evaluation with LazyConfig, as Detectron2's ``tools/lazyconfig_train_net.py``.

``do_train`` adds to Detectron2's loop: atomic checkpoints, an exactly resumable data stream and
random state (:mod:`sa_ejhead.engine.resume`), DistributedDataParallel on CPU processes, and a
clear error when the config asks for CUDA on a machine without it.
"""

import logging

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import build_detection_train_loader
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from torch.utils.data import IterableDataset

from .args import register_datasets_from_args
from .checkpoint import AtomicDetectionCheckpointer
from .ddp import create_ddp_model
from .resume import IterationSeeder, ResumableTrainingSampler

__all__ = [
    "build_lazy_model",
    "build_lazy_train_loader",
    "check_device",
    "do_test",
    "do_train",
    "load_lazy_config",
    "main",
]

logger = logging.getLogger("detectron2")


def check_device(device):
    """Fail early, with the fix in the message, when ``device`` is CUDA and there is none.

    Args:
        device (str or torch.device): the configured device.

    Returns:
        torch.device: the device.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"The config asks for device {str(device)!r} but CUDA is not available on this "
            "machine; add 'train.device=cpu' (LazyConfig) or 'MODEL.DEVICE cpu' (yacs) to the "
            "command line."
        )
    return device


def load_lazy_config(config_file, opts=None):
    """Load a LazyConfig file and apply ``key=value`` overrides.

    Args:
        config_file (str): path of the ``.py`` (or ``.yaml``) LazyConfig.
        opts (list[str] or None): overrides such as ``["train.max_iter=10"]``.

    Returns:
        omegaconf.DictConfig: the config.
    """
    cfg = LazyConfig.load(config_file)
    return LazyConfig.apply_overrides(cfg, list(opts or []))


def build_lazy_model(cfg):
    """Instantiate ``cfg.model`` and move it to ``cfg.train.device``.

    Args:
        cfg (omegaconf.DictConfig): a LazyConfig with ``model`` and ``train.device``.

    Returns:
        nn.Module: the model.
    """
    device = check_device(cfg.train.get("device", "cuda"))
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    return model.to(device)


def _is_d2_train_loader(target):
    if isinstance(target, str):
        target = locate(target)
    return target is build_detection_train_loader


def _run_seed(cfg):
    seed = cfg.train.get("seed", -1)
    if seed is None or seed < 0:
        seed = comm.shared_random_seed()
    return int(seed)


def build_lazy_train_loader(cfg, seed):
    """Instantiate ``cfg.dataloader.train`` with a :class:`ResumableTrainingSampler`.

    The sampler is used when the loader is Detectron2's ``build_detection_train_loader`` with a
    map-style dataset and no sampler of its own; otherwise the config is instantiated as it is
    and the data stream restarts on resume (a warning says so).

    Args:
        cfg (omegaconf.DictConfig): a LazyConfig with ``dataloader.train``.
        seed (int): the run's base seed (same on every rank).

    Returns:
        tuple: ``(data_loader, sampler or None, samples_per_iter)``; ``samples_per_iter`` is the
        number of indices one process draws per iteration.
    """
    loader_cfg = cfg.dataloader.train
    if not (
        _is_d2_train_loader(loader_cfg.get("_target_"))
        and "dataset" in loader_cfg
        and loader_cfg.get("sampler", None) is None
    ):
        logger.warning(
            "dataloader.train is not build_detection_train_loader without a sampler: "
            "--resume will restart its data stream."
        )
        return instantiate(loader_cfg), None, 1
    kwargs = dict(loader_cfg.items())
    dataset = instantiate(loader_cfg.dataset)
    if isinstance(dataset, IterableDataset):
        return instantiate(loader_cfg), None, 1
    sampler = ResumableTrainingSampler(len(dataset), seed=seed)
    kwargs.update(dataset=dataset, sampler=sampler)
    # The loader's own generator, so that starting it draws nothing from the global one.
    kwargs.setdefault("seed", (seed + comm.get_rank()) % 2**31)
    if kwargs.get("single_gpu_batch_size"):
        samples_per_iter = int(kwargs["single_gpu_batch_size"])
    else:
        samples_per_iter = int(kwargs["total_batch_size"]) // comm.get_world_size()
    return instantiate(kwargs), sampler, samples_per_iter


class _Evaluate:
    """Run :func:`do_test` and remember its results (the EvalHook's function)."""

    def __init__(self, cfg, model):
        self.cfg = cfg
        self.model = model
        self.results = {}

    def __call__(self):
        self.results = do_test(self.cfg, self.model)
        return self.results


def do_test(cfg, model):
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``.

    Args:
        cfg (omegaconf.DictConfig): a LazyConfig.
        model (nn.Module): the model, with its weights loaded.

    Returns:
        dict: the evaluator's results (e.g. ``{"bbox": {"AP": ...}, "segm": {...}}``) on the main
        process; ``{}`` on other processes or when the config has no evaluator.
    """
    if "evaluator" not in cfg.dataloader:
        return {}
    ret = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process() and ret:
        print_csv_format(ret)
    return ret or {}


def do_train(cfg, resume=False, extra_hooks=None):
    """Train the model of a LazyConfig; evaluate every ``train.eval_period`` and at the end.

    Checkpoints go to ``train.output_dir`` (atomically), every ``train.checkpointer.period``
    iterations and at the end. With ``resume=True`` and a ``last_checkpoint`` there, training
    continues from it exactly (same data, same random draws); otherwise it starts from
    ``train.init_checkpoint``. ``train.seed`` (>= 0) fixes the data order and random state;
    without it a seed is drawn and kept in the checkpoints.

    Args:
        cfg (omegaconf.DictConfig): a LazyConfig with ``model``, ``optimizer``,
            ``lr_multiplier``, ``dataloader`` and ``train`` (Detectron2's ``common/train.py``).
        resume (bool): resume from the last checkpoint in ``train.output_dir`` if there is one.
        extra_hooks (list[HookBase] or None): hooks run after the default ones.

    Returns:
        dict: the results of the last evaluation (main process), ``{}`` if none ran.
    """
    seed = _run_seed(cfg)
    # The model's initialisation too (default_setup may have done it; do_train can run alone).
    seed_all_rng((seed + comm.get_rank()) % 2**31)
    model = build_lazy_model(cfg)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader, sampler, samples_per_iter = build_lazy_train_loader(cfg, seed)

    model = create_ddp_model(model, **cfg.train.get("ddp", {}))
    amp = cfg.train.get("amp", {}).get("enabled", False)
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, train_loader, optim)
    checkpointer = AtomicDetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    evaluate = _Evaluate(cfg, model)
    main = comm.is_main_process()
    trainer.register_hooks(
        [
            IterationSeeder(seed, sampler, samples_per_iter),
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            (hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None),
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if main
                else None
            ),
        ]
        + list(extra_hooks or [])
    )

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    if resume and checkpointer.has_checkpoint():
        # The checkpoint stores the iteration that just finished.
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)
    return evaluate.results


def main(args):
    """Entry point of ``tools/lazyconfig_train_net.py``, run in every process by ``launch``.

    Args:
        args (argparse.Namespace): from :func:`sa_ejhead.engine.default_argument_parser`.

    Returns:
        dict: evaluation results (main process).
    """
    register_datasets_from_args(args)
    cfg = load_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="sa_ejhead")
    if args.eval_only:
        model = build_lazy_model(cfg)
        model = create_ddp_model(model)
        AtomicDetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    return do_train(cfg, resume=args.resume)
