# Table 2 "Cascade Mask R-CNN + SA-FPN + EJ-Head", demo-sized: EJCascadeROIHeads (14x14 RoIs in
# every stage, one shared residual refinement, interleaving on the last stage's boxes).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from sa_ejhead.modeling import BoundaryRefinement, EJCascadeROIHeads, EJFastRCNNConvFCHead

from .cascade_baseline import dataloader, lr_multiplier, model, optimizer, train
from .safpn_ejhead import model as _ours

model.backbone = _ours.backbone
model.roi_heads.update(
    _target_=EJCascadeROIHeads,
    refinement=L(BoundaryRefinement)(channels=64, mode="residual", bottleneck_channels=0),
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
        input_shape=ShapeSpec(channels=64, height=14, width=14),
        conv_dims=[],
        fc_dims=[256, 256],
        box_fc_input="flatten",
    )
    for _ in range(3)
]
