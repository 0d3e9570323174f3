# v2 Table 4 "Interleaving" only: EJROIHeads with 7x7 box RoIs and no refinement (with all three
# switches off it is StandardROIHeads); fc1 at the base lr (7x7 input).
from detectron2.layers import ShapeSpec

from ._settings import CHANNELS
from .ejhead import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.refinement = None
model.roi_heads.box_pooler.output_size = 7
model.roi_heads.box_head.input_shape = ShapeSpec(channels=CHANNELS, height=7, width=7)
optimizer.params.lr_factor_func = None
