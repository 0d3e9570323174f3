"""Training and evaluation engine of sa-ejhead, used by ``tools/`` and the demo pipeline.

* LazyConfig: :func:`do_train`, :func:`do_test` (Detectron2's ``lazyconfig_train_net.py``);
* yacs: :class:`Trainer` (``DefaultTrainer`` + ``COCOEvaluator``);
* both: :func:`load_config` (either kind, overrides checked), :func:`build_cpu_model` (seeded,
  eval mode, optional checkpoint), :func:`default_argument_parser` (Detectron2's plus
  ``--coco-dataset``), :func:`register_datasets_from_args`, :class:`AtomicDetectionCheckpointer`,
  :func:`create_ddp_model` (also on CPU processes), exact resume
  (:class:`ResumableTrainingSampler`, :class:`IterationSeeder`).
"""

from .args import (
    default_argument_parser,
    parse_coco_dataset_spec,
    register_coco_dataset_specs,
    register_datasets_from_args,
)
from .build import build_cpu_model, is_lazy_config, load_config, load_weights
from .checkpoint import AtomicDetectionCheckpointer, atomic_write, export_submodule_weights
from .ddp import create_ddp_model
from .lazy import (
    apply_lazy_overrides,
    build_lazy_model,
    check_device,
    do_test,
    do_train,
    load_lazy_config,
)
from .resume import IterationSeeder, ResumableTrainingSampler
from .trainer import Trainer, load_yacs_config, setup_yacs_config

__all__ = [
    "AtomicDetectionCheckpointer",
    "IterationSeeder",
    "ResumableTrainingSampler",
    "Trainer",
    "atomic_write",
    "build_cpu_model",
    "build_lazy_model",
    "check_device",
    "create_ddp_model",
    "default_argument_parser",
    "do_test",
    "do_train",
    "export_submodule_weights",
    "is_lazy_config",
    "load_config",
    "load_weights",
    "apply_lazy_overrides",
    "load_lazy_config",
    "load_yacs_config",
    "parse_coco_dataset_spec",
    "register_coco_dataset_specs",
    "register_datasets_from_args",
    "setup_yacs_config",
]
