# Paper Table 4 "Boundary Refinement" only (37.8 / 34.2) = Table 5 "Simple Conv x 2 + Shortcut":
# the residual block, shared by the 7x7 box RoIs and the 14x14 mask RoIs; no interleaving.
from detectron2.layers import ShapeSpec

from .mask_rcnn_R_50_FPN_EJHead_1x import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.interleave = False
model.roi_heads.refinement.mode = "residual"
model.roi_heads.box_pooler.output_size = 7
model.roi_heads.box_head.input_shape = ShapeSpec(channels=256, height=7, width=7)
optimizer.params.lr_factor_func = None  # 7x7 box RoIs: fc1 at the base lr
# Table 5's rows end linear, so that they differ only in the shortcut (docs/design.md)
model.roi_heads.refinement.last_relu = False
