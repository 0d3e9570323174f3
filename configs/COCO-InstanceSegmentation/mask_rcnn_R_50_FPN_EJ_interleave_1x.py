# Paper Table 4 "Interleaving" only (37.2 / 34.5): 7x7 box RoIs, no refinement.
from detectron2.layers import ShapeSpec

from .mask_rcnn_R_50_FPN_EJHead_1x import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.interleave = True
model.roi_heads.refinement = None
model.roi_heads.box_pooler.output_size = 7
model.roi_heads.box_head.input_shape = ShapeSpec(channels=256, height=7, width=7)
optimizer.params.lr_factor_func = None  # 7x7 box RoIs: fc1 at the base lr
