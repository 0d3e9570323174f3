"""Training and evaluation with LazyConfig, as Detectron2's ``tools/lazyconfig_train_net.py``,
plus atomic checkpoints, exact resume, DistributedDataParallel on CPU processes, one-line errors.
"""

import logging

import torch
from detectron2.config import instantiate
from detectron2.data import build_detection_train_loader
from detectron2.engine import create_ddp_model as _d2_create_ddp_model
from detectron2.engine import default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from torch.utils.data import IterableDataset

from ..config import load_lazy_config
from ..errors import ConfigError, errors_logged_in
from .args import register_datasets_from_args
from .checkpoint import AtomicDetectionCheckpointer, check_checkpoint_path
from .resume import IterationSeeder, ResumableTrainingSampler, process_seed, run_seed
from .train_loop import AMPTrainer, EvalHook, SimpleTrainer

logger = logging.getLogger("detectron2")


def check_device(device):
    """Return ``torch.device(device)``; a :class:`~sa_ejhead.errors.ConfigError` with the fix when
    it is CUDA and there is none."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"The config asks for device {str(device)!r} but CUDA is not available on this "
            "machine; add 'train.device=cpu' (LazyConfig) or 'MODEL.DEVICE cpu' (yacs) to the "
            "command line."
        )
    return device


def create_ddp_model(model, **kwargs):
    """Detectron2's ``create_ddp_model``, with ``device_ids=None`` for a model on the CPU (which
    PyTorch requires), so that the gloo backend trains on CPU processes too."""
    params = list(model.parameters())
    if params and params[0].device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)


def build_lazy_model(cfg):
    """Instantiate ``cfg.model`` and move it to ``cfg.train.device`` (default CUDA)."""
    device = check_device(cfg.train.get("device", "cuda"))
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    return model.to(device)


def build_lazy_train_loader(cfg, seed):
    """``(data_loader, sampler, samples_per_iter)``: ``cfg.dataloader.train`` with a
    :class:`ResumableTrainingSampler` seeded by ``seed`` (drawing ``samples_per_iter`` indices per
    iteration on this process) if it is Detectron2's ``build_detection_train_loader`` on a
    map-style dataset without a sampler; else ``(loader, None, 1)``, whose stream restarts."""
    loader_cfg = cfg.dataloader.train
    target = loader_cfg.get("_target_")
    if not (
        (locate(target) if isinstance(target, str) else target) is build_detection_train_loader
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
    # the loader's own generator: starting it draws nothing from the global one
    kwargs.setdefault("seed", process_seed(seed))
    if kwargs.get("single_gpu_batch_size"):
        samples_per_iter = int(kwargs["single_gpu_batch_size"])
    else:
        samples_per_iter = int(kwargs["total_batch_size"]) // comm.get_world_size()
    return instantiate(kwargs), sampler, samples_per_iter


def do_test(cfg, model):
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``; return
    the results on the main process, ``{}`` on the others or without an evaluator."""
    if "evaluator" not in cfg.dataloader:
        return {}
    ret = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process() and ret:
        print_csv_format(ret)
    return ret or {}


def do_train(cfg, resume=False, extra_hooks=None):
    """Train the model of a LazyConfig, evaluating every ``train.eval_period`` and at the end;
    return the last evaluation's results (main process; ``{}`` if none ran).

    With ``resume=True`` and a ``last_checkpoint`` in ``train.output_dir``, training continues
    from it exactly, else from ``train.init_checkpoint``. ``train.seed`` (>= 0) fixes the data
    order and random state (default: drawn, kept in the checkpoints). ``extra_hooks`` run after
    the default ones.
    """
    output_dir = cfg.train.output_dir
    resume_dir = output_dir if resume else None
    check_checkpoint_path(cfg.train.init_checkpoint, "train.init_checkpoint", resume_dir)
    seed = run_seed(cfg.train.get("seed", -1))
    # the model's initialisation too (do_train may run without default_setup)
    seed_all_rng(process_seed(seed))
    model = build_lazy_model(cfg)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader, sampler, samples_per_iter = build_lazy_train_loader(cfg, seed)

    model = create_ddp_model(model, **cfg.train.get("ddp", {}))
    amp = cfg.train.get("amp", {}).get("enabled", False)
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, train_loader, optim)
    checkpointer = AtomicDetectionCheckpointer(model, output_dir, trainer=trainer)
    trainer.checkpointer = checkpointer  # names the last checkpoint if training diverges
    last = {}  # the results of the last evaluation

    def evaluate():
        last["results"] = do_test(cfg, model)
        return last["results"]

    main = comm.is_main_process()
    writers = default_writers(output_dir, cfg.train.max_iter) if main else None
    trainer.register_hooks(
        [
            IterationSeeder(seed, sampler, samples_per_iter),
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            EvalHook(cfg.train.eval_period, evaluate),
            hooks.PeriodicWriter(writers, cfg.train.log_period) if main else None,
        ]
        + list(extra_hooks or [])
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # a checkpoint stores the iteration that just finished
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return last.get("results", {})


def main(args):
    """Entry point of ``tools/lazyconfig_train_net.py``, run in every process by ``launch``."""
    register_datasets_from_args(args)
    cfg = load_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="sa_ejhead")
    with errors_logged_in(cfg.train.output_dir):
        if args.eval_only:
            check_checkpoint_path(cfg.train.init_checkpoint, "train.init_checkpoint")
            model = create_ddp_model(build_lazy_model(cfg))
            AtomicDetectionCheckpointer(model).load(cfg.train.init_checkpoint)
            return do_test(cfg, model)
        return do_train(cfg, resume=args.resume)
