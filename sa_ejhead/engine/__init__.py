"""Training and evaluation engine of sa-ejhead, used by ``tools/`` and the demo pipeline.

LazyConfig: :func:`do_train`, :func:`do_test`; yacs: :class:`Trainer`; both: config loading with
checked overrides, models, ``--coco-dataset``, atomic checkpoints, CPU DDP and exact resume
(docs/tools.md, "Library API").
"""

from .args import (
    default_argument_parser,
    launch_tool,
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
    "launch_tool",
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
