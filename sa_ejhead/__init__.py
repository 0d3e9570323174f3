"""SA-FPN and EJ-Head for Detectron2.

Importing this package registers its modules in Detectron2's registries
(``BACKBONE_REGISTRY``, ``ROI_HEADS_REGISTRY``) and the embedded datasets in ``DatasetCatalog``.
"""

from . import modeling  # noqa: F401  (registers the modules)
from . import data  # noqa: F401  (registers sa_shapes_train / sa_shapes_val)
from . import pretrained  # noqa: F401  (registers the sa_ejhead://pretrained/ paths)
from .config import add_sa_ejhead_config  # noqa: F401

__version__ = "0.1.0"
