# Cascade Mask R-CNN + SA-FPN + EJ-Head (paper Table 2, last row): Detectron2's
# common/models/cascade_rcnn.py (3 stages, IoU 0.5/0.6/0.7, class-agnostic regression) with the
# SA-FPN neck and EJCascadeROIHeads: every stage pools 14x14 RoIs refined by the one shared
# Boundary Refinement; interleaving trains the mask branch on the last stage's regressed boxes
# re-matched at IoU 0.5. Switches and levers as in mask_rcnn_ejhead.py (each stage's box head
# takes the refined 14x14 feature).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from sa_ejhead.modeling import BoundaryRefinement, EJCascadeROIHeads, EJFastRCNNConvFCHead

from .mask_rcnn_safpn import model

model.roi_heads = get_config("common/models/cascade_rcnn.py").model.roi_heads
model.roi_heads.update(
    _target_=EJCascadeROIHeads,
    refinement=L(BoundaryRefinement)(channels=256, mode="residual", bottleneck_channels=0),
    refinement_scope="shared",
    box_refinement_downsample=1,
    interleave=True,
    interleave_append_gt=True,
    interleave_iou_threshold=0.5,
    interleave_max_positives=128,
)
model.roi_heads.box_pooler.output_size = 14
model.roi_heads.box_heads = [
    L(EJFastRCNNConvFCHead)(
        input_shape=ShapeSpec(channels=256, height=14, width=14),
        conv_dims=[],
        fc_dims=[1024, 1024],
        box_fc_input="flatten",
    )
    for _ in range(3)
]
