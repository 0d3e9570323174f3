"""yacs training: a ``DefaultTrainer`` with COCO evaluation, exact resume and atomic checkpoints."""

import logging
import os
import weakref

import torch

from detectron2.config import get_cfg
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, TrainerBase, default_setup, hooks
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from sa_ejhead.config import add_sa_ejhead_config
from sa_ejhead.errors import ConfigError, errors_logged_in
from sa_ejhead.data import CheckedDatasetMapper
from sa_ejhead.evaluation import COCOEvaluator
from sa_ejhead.solver import ParamLRFactor, fc1_prefixes

from .args import register_datasets_from_args
from .checkpoint import AtomicDetectionCheckpointer, check_checkpoint_path
from .ddp import create_ddp_model
from .lazy import check_config_file, check_device
from .resume import IterationSeeder, ResumableTrainingSampler, process_seed, run_seed
from .train_loop import AMPTrainer, EvalHook, SimpleTrainer

__all__ = ["Trainer", "load_yacs_config", "setup_yacs_config", "main"]


class Trainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` with :class:`CheckedDatasetMapper` loaders, our
    ``COCOEvaluator``, atomic checkpoints, exact ``--resume`` with the default ``TrainingSampler``
    (:class:`IterationSeeder`, seeded by ``cfg.SEED`` or a drawn seed kept in the checkpoints),
    DistributedDataParallel on CPU (gloo) processes too, and the project's errors for a missing
    ``MODEL.WEIGHTS`` (before the model is built) and a diverging training; the evaluation after
    training runs only when training finished.
    """

    def __init__(self, cfg):
        # A copy of detectron2.engine.DefaultTrainer.__init__ (Detectron2 0.7.2), in the same
        # order, with: the seed set before the model is built, a resumable sampler, our
        # create_ddp_model (which also wraps CPU models; Detectron2's calls its own module-level
        # create_ddp_model, which a subclass cannot replace), the atomic checkpointer, and
        # trainers that stop with a TrainingDivergedError.
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        check_device(cfg.MODEL.DEVICE)
        # resume_or_load(resume=...) is called later: check unless it may resume
        check_checkpoint_path(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", resume_dir=cfg.OUTPUT_DIR)

        self.seed = run_seed(cfg.SEED)
        # The model's initialisation too (as default_setup; the Trainer can be built alone).
        seed_all_rng(process_seed(self.seed))
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        dataset, self.train_sampler = self.build_train_sampler(cfg, self.seed)
        data_loader = self.build_train_loader(cfg, dataset=dataset, sampler=self.train_sampler)

        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self._trainer.checkpointer = self.checkpointer  # named if training diverges
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's SGD, with the box head's fc1 at ``SOLVER.ENRICHED_FC1_LR_FACTOR`` of the
        base lr (docs/design.md, "The Enriched Feature's first fc"); at 1.0 it is Detectron2's
        ``build_optimizer`` itself, otherwise the same SGD arguments as that function
        (Detectron2 0.7.2) plus the factor."""
        factor = cfg.SOLVER.ENRICHED_FC1_LR_FACTOR
        stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)  # the box heads of a cascade, if one
        if factor == 1.0:
            return super().build_optimizer(cfg, model)
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
    def build_train_sampler(cls, cfg, seed):
        """``(dataset dicts, ResumableTrainingSampler)`` from the run's ``seed``, or ``(None,
        None)`` when ``DATALOADER.SAMPLER_TRAIN`` is not ``TrainingSampler`` (Detectron2 then
        builds its own sampler, whose stream restarts on resume)."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logging.getLogger(__name__).warning(
                f"{cfg.DATALOADER.SAMPLER_TRAIN}: --resume will restart its data stream."
            )
            return None, None
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        return dataset, ResumableTrainingSampler(len(dataset), seed=seed)

    @classmethod
    def build_train_loader(cls, cfg, dataset=None, sampler=None):
        """Detectron2's train loader with :class:`CheckedDatasetMapper`, on ``dataset`` and
        ``sampler`` if given (else ``DATASETS.TRAIN``, ``DATALOADER.SAMPLER_TRAIN``)."""
        mapper = CheckedDatasetMapper(cfg, is_train=True)
        if sampler is None:
            return build_detection_train_loader(cfg, mapper=mapper)
        # The loader's own generator, so that starting it draws nothing from the global one.
        return build_detection_train_loader(
            cfg, mapper=mapper, dataset=dataset, sampler=sampler, seed=process_seed(sampler.seed)
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader with :class:`CheckedDatasetMapper`."""
        return build_detection_test_loader(
            cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False)
        )

    def build_hooks(self):
        """Detectron2's default hooks, preceded by the :class:`IterationSeeder`, with our
        :class:`~sa_ejhead.engine.train_loop.EvalHook` (no evaluation after a failed training)."""
        per_iter = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        ret = [IterationSeeder(self.seed, self.train_sampler, per_iter)]
        for hook in super().build_hooks():
            if isinstance(hook, hooks.EvalHook):
                hook = EvalHook(self.cfg.TEST.EVAL_PERIOD, self._test_and_save_results)
            ret.append(hook)
        return ret

    def _test_and_save_results(self):
        # what DefaultTrainer.build_hooks evaluates (Detectron2 0.7.2)
        self._last_eval_results = self.test(self.cfg, self.model)
        return self._last_eval_results

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """A :class:`COCOEvaluator` writing to ``output_folder`` (``OUTPUT_DIR/inference``)."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def _message(error):
    return str(error.args[0]) if error.args else str(error)


def load_yacs_config(config_file="", opts=None):
    """``get_cfg()`` + :func:`add_sa_ejhead_config` + a YAML file ('' for none) + ``KEY VALUE``
    overrides; not frozen. A missing file, an unknown key or a value of the wrong type raises a
    :class:`ConfigError` (a KeyError and a ValueError) naming the file or the command line."""
    cfg = add_sa_ejhead_config(get_cfg())
    if config_file:
        check_config_file(config_file)
        where = f"in config file {config_file!r} (or one of its _BASE_ files)"
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            raise ConfigError(
                f"{_message(e)} {where}; the keys of sa-ejhead come from add_sa_ejhead_config"
            ) from e
        except ValueError as e:
            raise ConfigError(f"{_message(e)} {where}") from e
    if opts:
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:
            # yacs asserts "Non-existent key" and "odd length" for command-line overrides.
            if "Non-existent" in _message(e):
                raise ConfigError(f"{_message(e)} in the command-line overrides") from e
            raise ConfigError(f"{_message(e)} in the command-line overrides {opts}") from e
        except ValueError as e:
            raise ConfigError(f"{_message(e)} in the command-line overrides") from e
    return cfg


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
