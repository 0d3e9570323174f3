"""SA-FPN and EJ-Head for Detectron2.

Importing this package registers its modules in Detectron2's registries
(``BACKBONE_REGISTRY``, ``ROI_HEADS_REGISTRY``) and the embedded datasets in ``DatasetCatalog``.
"""

import warnings

with warnings.catch_warnings():
    # fvcore 0.1.5 and Detectron2 0.7.2 call torch.jit.script when they are imported, which
    # PyTorch 2.14 deprecates with a FutureWarning per call: noise that users can do nothing
    # about, printed before anything a tool says. Only these, only while importing.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )
    from . import modeling  # noqa: F401  (registers the modules)
    from . import data  # noqa: F401  (registers sa_shapes_train / sa_shapes_val)
    from . import pretrained  # noqa: F401  (registers the sa_ejhead:// paths)
    from .config import add_sa_ejhead_config  # noqa: F401

__version__ = "0.1.0"
