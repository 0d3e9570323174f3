"""Models of sa-ejhead; importing this module registers them with Detectron2."""

from .safpn import SAFPN, build_resnet_safpn_backbone  # noqa: F401
from .box_head import (  # noqa: F401
    ENRICHED_FC1,
    EJFastRCNNConvFCHead,
    ParamLRFactor,
    enriched_fc1_lr_factor,
    fc1_prefixes,
)
from .poolers import (  # noqa: F401
    RefinedROIPooler,
    ThreadedROIAlign,
    ThreadedROIPooler,
    use_threaded_roi_align,
)
from .refinement import BoundaryRefinement, build_refinement  # noqa: F401
from .ej_roi_heads import EJCascadeROIHeads, EJROIHeads  # noqa: F401
