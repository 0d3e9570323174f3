# Table 4 "Boundary Refinement" only = Table 5 "Simple Conv x 2 + Shortcut": the residual block
# shared by the 7x7 box RoIs and the 14x14 mask RoIs; no interleaving.
from detectron2.layers import ShapeSpec

from .ejhead import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.interleave = False
model.roi_heads.refinement.mode = "residual"
model.roi_heads.box_pooler.output_size = 7
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
