"""Training and evaluation engine of sa-ejhead, used by ``tools/`` and the demo pipeline.

LazyConfig: :func:`do_train`, :func:`do_test`; yacs: :class:`Trainer`; both: config loading with
checked overrides, models, ``--coco-dataset``, atomic checkpoints, CPU DDP and exact resume
(docs/tools.md, "Library API").
"""

from ..config import apply_lazy_overrides, load_lazy_config, load_yacs_config
from .args import (
    default_argument_parser,
    launch_tool,
    parse_coco_dataset_spec,
    register_datasets_from_args,
)
from .build import (
    build_config_model,
    build_cpu_model,
    build_evaluator,
    build_test_loader,
    config_input_format,
    config_weights,
    is_lazy_config,
    is_yacs_config,
    load_config,
    load_weights,
    overridden_keys,
    set_config_weights,
    test_augmentations,
    weights_option,
)
from .checkpoint import AtomicDetectionCheckpointer, atomic_write
from .lazy import build_lazy_model, check_device, create_ddp_model, do_test, do_train
from .resume import IterationSeeder, ResumableTrainingSampler
from .trainer import Trainer, setup_yacs_config

__all__ = [
    "AtomicDetectionCheckpointer",
    "IterationSeeder",
    "ResumableTrainingSampler",
    "Trainer",
    "atomic_write",
    "build_config_model",
    "build_cpu_model",
    "build_evaluator",
    "build_test_loader",
    "config_input_format",
    "config_weights",
    "is_yacs_config",
    "overridden_keys",
    "set_config_weights",
    "test_augmentations",
    "weights_option",
    "build_lazy_model",
    "check_device",
    "create_ddp_model",
    "default_argument_parser",
    "do_test",
    "do_train",
    "is_lazy_config",
    "launch_tool",
    "load_config",
    "load_weights",
    "apply_lazy_overrides",
    "load_lazy_config",
    "load_yacs_config",
    "parse_coco_dataset_spec",
    "register_datasets_from_args",
    "setup_yacs_config",
]
