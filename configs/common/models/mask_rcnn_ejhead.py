# Mask R-CNN with the EJ-Head (paper Table 2 "Mask R-CNN + EJ-Head"): Detectron2's
# common/models/mask_rcnn_fpn.py with EJROIHeads. The three switches (docs/design.md, EJ-Head)
# are independent (Table 4 / Table 5 rows; the arguments are documented in EJROIHeads'
# and BoundaryRefinement's docstrings):
#   Enriched Feature:     box_pooler.output_size = 14 and a box head for 14x14 inputs flattened
#                         into the first fc; 7 with box_head.input_shape 7x7 turns it off.
#   Boundary Refinement:  refinement.mode = "none" | "conv1" | "conv2" | "conv3" | "residual"
#                         (refinement=None also turns it off); refinement_scope = "shared" | "box".
#   Interleaving:         interleave = True | False (interleave_append_gt re-appends the GT boxes).
# Efficiency levers (faithful values here; the efficient model sets them, costs in docs/ejhead.md):
# refinement.bottleneck_channels (0 = faithful).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from sa_ejhead.modeling import BoundaryRefinement, EJFastRCNNConvFCHead, EJROIHeads

# the arguments EJROIHeads adds to Detectron2's StandardROIHeads here (EJCascadeROIHeads takes them
# too: cascade_mask_rcnn_safpn_ejhead.py)
EJ_HEAD_ARGUMENTS = (
    "refinement",
    "refinement_scope",
    "interleave",
    "interleave_append_gt",
    "interleave_iou_threshold",
    "interleave_max_positives",
)

model = get_config("common/models/mask_rcnn_fpn.py").model
model.roi_heads.update(
    _target_=EJROIHeads,
    refinement=L(BoundaryRefinement)(channels=256, mode="residual", bottleneck_channels=0),
    refinement_scope="shared",
    interleave=True,
    interleave_append_gt=True,
    interleave_iou_threshold=0.5,
    interleave_max_positives=128,
)
model.roi_heads.box_pooler.output_size = 14
model.roi_heads.box_head = L(EJFastRCNNConvFCHead)(
    input_shape=ShapeSpec(channels=256, height=14, width=14),
    conv_dims=[],
    fc_dims=[1024, 1024],
)
