"""Datasets of sa-ejhead: the embedded SA-Shapes set and validated COCO-format registration.

Importing this module registers ``sa_shapes_train`` and ``sa_shapes_val``.
"""

from ..errors import (  # noqa: F401  (the dataset errors, importable from here too)
    DatasetError,
    DatasetFileNotFoundError,
    DatasetFormatError,
    DatasetImageError,
)
from .datasets import (  # noqa: F401
    SA_SHAPES_DEFAULTS,
    default_sa_shapes_root,
    prepare_sa_shapes,
    register_coco_instances_checked,
    register_sa_shapes,
)
from .mapper import CheckedDatasetMapper  # noqa: F401
from .synthetic import SA_SHAPES_CATEGORIES, generate_sa_shapes, size_counts  # noqa: F401
from .validation import validate_coco_json  # noqa: F401
