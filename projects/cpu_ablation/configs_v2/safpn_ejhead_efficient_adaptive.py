# v2 table E: the efficient row with Detectron2's adaptive sampling ratio (0) in the box pooler, as
# the efficient model had it before the exact 7x7 pooling (14x14 RoIAlign, then 2x2 average
# pool): what the fixed ratio 1 of safpn_ejhead_efficient.py costs or gains in AP.
from .safpn_ejhead_efficient import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.box_pooler.sampling_ratio = 0
