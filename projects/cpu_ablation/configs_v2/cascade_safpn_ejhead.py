# v2 Table 2 "Cascade Mask R-CNN + SA-FPN + EJ-Head": the cascade baseline with the SA-FPN neck and
# EJCascadeROIHeads (14x14 box RoIs flattened into each stage's fc1 at (7/14)^2 of the lr, the
# shared residual refinement, interleaving on the last stage's boxes, with the protocol's cap).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from sa_ejhead.modeling import BoundaryRefinement, EJCascadeROIHeads, EJFastRCNNConvFCHead
from sa_ejhead.solver import enriched_fc1_lr_factor

from ._settings import CHANNELS, FC_DIM, MAX_POSITIVES
from .cascade_baseline import dataloader, lr_multiplier, model, optimizer, train
from .safpn_ejhead import model as _ours

model.backbone = _ours.backbone
model.roi_heads.update(
    _target_=EJCascadeROIHeads,
    refinement=L(BoundaryRefinement)(
        channels=CHANNELS, mode="residual", bottleneck_channels=0, last_relu=False
    ),
    refinement_scope="shared",
    box_refinement_downsample=1,
    interleave=True,
    interleave_append_gt=True,
    interleave_iou_threshold=0.5,
    interleave_max_positives=MAX_POSITIVES,
)
model.roi_heads.box_pooler.output_size = 14
model.roi_heads.box_heads = [
    L(EJFastRCNNConvFCHead)(
        input_shape=ShapeSpec(channels=CHANNELS, height=14, width=14),
        conv_dims=[],
        fc_dims=[FC_DIM, FC_DIM],
        box_fc_input="flatten",
    )
    for _ in range(3)
]
optimizer.params.lr_factor_func = enriched_fc1_lr_factor(14, 7, num_stages=3)
