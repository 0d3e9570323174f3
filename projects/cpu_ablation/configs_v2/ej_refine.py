# v2 Table 4 "Boundary Refinement" only = Table 5 "Simple Conv x 2 + Shortcut": the residual
# block shared by the 7x7 box RoIs and the 14x14 mask RoIs; no interleaving; fc1 at the base lr.
from detectron2.layers import ShapeSpec

from ._settings import CHANNELS
from .ejhead import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.interleave = False
model.roi_heads.refinement.mode = "residual"
model.roi_heads.box_pooler.output_size = 7
model.roi_heads.box_head.input_shape = ShapeSpec(channels=CHANNELS, height=7, width=7)
optimizer.params.lr_factor_func = None
