"""Training and evaluation engine of sa-ejhead, used by ``tools/`` and the demo pipeline.

LazyConfig: :func:`do_train`, :func:`do_test`; yacs: :class:`Trainer`; both: config loading with
checked overrides, models, ``--coco-dataset``, atomic checkpoints, CPU DDP and exact resume
(docs/tools.md, "Library API").
"""

from ..config import apply_lazy_overrides, load_lazy_config, load_yacs_config  # noqa: F401
from .args import (  # noqa: F401
    default_argument_parser,
    launch_tool,
    parse_coco_dataset_spec,
    register_datasets_from_args,
)
from .build import (  # noqa: F401
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
from .checkpoint import AtomicDetectionCheckpointer, atomic_write  # noqa: F401
from .lazy import build_lazy_model, check_device, create_ddp_model, do_test, do_train  # noqa: F401
from .resume import IterationSeeder, ResumableTrainingSampler  # noqa: F401
from .trainer import Trainer, setup_yacs_config  # noqa: F401
