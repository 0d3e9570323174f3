# Paper Table 4 "Boundary Refinement" only (37.8 / 34.2) = Table 5 "Simple Conv x 2 + Shortcut":
# the residual block, shared by the 7x7 box RoIs and the 14x14 mask RoIs; no interleaving.
from detectron2.layers import ShapeSpec

from .mask_rcnn_R_50_FPN_EJHead_1x import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.interleave = False
model.roi_heads.refinement.mode = "residual"
model.roi_heads.box_pooler.output_size = 7
model.roi_heads.box_head.input_shape = ShapeSpec(channels=256, height=7, width=7)
