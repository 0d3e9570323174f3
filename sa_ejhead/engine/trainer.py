"""yacs training: Detectron2's ``DefaultTrainer`` with checked data, our COCO evaluation, exact
resume and atomic checkpoints."""

import logging
import os

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_setup, hooks
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..config import load_yacs_config
from ..data import CheckedDatasetMapper
from ..errors import ConfigError, errors_logged_in
from ..evaluation import COCOEvaluator
from ..modeling import ParamLRFactor, fc1_prefixes
from .args import register_datasets_from_args
from .checkpoint import AtomicDetectionCheckpointer, check_checkpoint_path
from .lazy import check_device
from .resume import IterationSeeder, ResumableTrainingSampler, process_seed, run_seed
from .train_loop import EvalHook, StopsOnDivergence

logger = logging.getLogger(__name__)


class Trainer(StopsOnDivergence, DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` with :class:`CheckedDatasetMapper` loaders, our
    ``COCOEvaluator``, atomic checkpoints, exact ``--resume`` (seeded by ``cfg.SEED`` or a drawn
    seed, kept in ``self.cfg.SEED``), and the project's errors (as :func:`~.lazy.do_train`)."""

    def __init__(self, cfg):
        if check_device(cfg.MODEL.DEVICE).type == "cpu" and comm.get_world_size() > 1:
            # DefaultTrainer gives DistributedDataParallel a device id, refused for a CPU model
            raise ConfigError(
                "the yacs Trainer trains on GPUs only when there are several processes (--num-gpus "
                f"{comm.get_world_size()} with MODEL.DEVICE cpu): train on one process, or train "
                "a LazyConfig (tools/lazyconfig_train_net.py trains on several CPU processes)"
            )
        # resume_or_load(resume=...) is called later: check unless it may resume
        check_checkpoint_path(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", resume_dir=cfg.OUTPUT_DIR)
        cfg, frozen = cfg.clone(), cfg.is_frozen()
        cfg.defrost()
        cfg.SEED = run_seed(cfg.SEED)
        if frozen:
            cfg.freeze()
        seed_all_rng(process_seed(cfg.SEED))  # the model's initialisation too
        super().__init__(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, with the box heads' fc1 at ``SOLVER.ENRICHED_FC1_LR_FACTOR``."""
        factor = cfg.SOLVER.ENRICHED_FC1_LR_FACTOR
        if factor == 1.0:
            return super().build_optimizer(cfg, model)
        # detectron2.solver.build_optimizer (0.7.2), which takes no lr_factor_func, plus the factor
        stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)  # the box heads of a cascade, if one
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
            lr_factor_func=ParamLRFactor(fc1_prefixes(0) + fc1_prefixes(stages), factor),
        )
        sgd = torch.optim.SGD(
            params,
            lr=cfg.SOLVER.BASE_LR,
            momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )
        return maybe_add_gradient_clipping(cfg, sgd)

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader with :class:`CheckedDatasetMapper` and, instead of the default
        ``TrainingSampler``, a :class:`ResumableTrainingSampler`, kept as ``resumable_sampler``."""
        args = build_detection_train_loader.from_config(cfg, CheckedDatasetMapper(cfg, True))
        sampler = None
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(
                f"{cfg.DATALOADER.SAMPLER_TRAIN}: --resume will restart its data stream."
            )
        elif args["sampler"] is not None:  # not an IterableDataset
            seed = run_seed(cfg.SEED)
            sampler = args["sampler"] = ResumableTrainingSampler(len(args["dataset"]), seed=seed)
            # the loader's own generator: starting it draws nothing from the global one
            args["seed"] = process_seed(seed)
        loader = build_detection_train_loader(**args)
        loader.resumable_sampler = sampler
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader with :class:`CheckedDatasetMapper`."""
        mapper = CheckedDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """A :class:`COCOEvaluator` writing to ``output_folder`` (``OUTPUT_DIR/inference``)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    def build_hooks(self):
        """Detectron2's default hooks, after the :class:`IterationSeeder`, with our ``EvalHook`` and
        an atomic checkpointer (replaced here, before the hooks take it)."""
        c = self.checkpointer
        self.checkpointer = AtomicDetectionCheckpointer(c.model, c.save_dir, **c.checkpointables)
        sampler = getattr(self._trainer.data_loader, "resumable_sampler", None)
        per_iter = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        ret = [IterationSeeder(self.cfg.SEED, sampler, per_iter)]
        for hook in super().build_hooks():
            if isinstance(hook, hooks.EvalHook):
                hook = EvalHook(self.cfg.TEST.EVAL_PERIOD, self._test_and_save_results)
            ret.append(hook)
        return ret

    def _test_and_save_results(self):  # what DefaultTrainer's EvalHook runs (Detectron2 0.7.2)
        self._last_eval_results = self.test(self.cfg, self.model)
        return self._last_eval_results


def setup_yacs_config(args):
    """The frozen config of ``tools/train_net.py`` (``args.config_file``, ``args.opts``), after
    Detectron2's ``default_setup``."""
    cfg = load_yacs_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sa_ejhead")
    return cfg


def main(args):
    """Entry point of ``tools/train_net.py``, run in every process by ``launch``."""
    register_datasets_from_args(args)
    cfg = setup_yacs_config(args)
    with errors_logged_in(cfg.OUTPUT_DIR):
        if args.eval_only:
            check_device(cfg.MODEL.DEVICE)
            resume_dir = cfg.OUTPUT_DIR if args.resume else None
            check_checkpoint_path(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", resume_dir)
            model = Trainer.build_model(cfg)
            AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
                cfg.MODEL.WEIGHTS, resume=args.resume
            )
            return Trainer.test(cfg, model)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()
