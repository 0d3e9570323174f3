"""Models of sa-ejhead; importing this module registers them with Detectron2."""

from .safpn import SAFPN, build_resnet_safpn_backbone  # noqa: F401
from .box_head import EJFastRCNNConvFCHead  # noqa: F401
from .poolers import ThreadedROIAlign, ThreadedROIPooler, use_threaded_roi_align  # noqa: F401
from .refinement import BoundaryRefinement, build_refinement  # noqa: F401
from .ej_roi_heads import EJCascadeROIHeads, EJROIHeads, direct_box_pooler  # noqa: F401
