# Table 4 "Interleaving" only: 7x7 box RoIs, no refinement.
from detectron2.layers import ShapeSpec

from .ejhead import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.refinement = None
model.roi_heads.box_pooler.output_size = 7
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
