# v2 table E: the efficient row with Detectron2's adaptive sampling ratio (0) in the box pooler, as
# the efficient model had it before the exact 7x7 pooling: a 14x14 RoIAlign, then a 2x2 average
# pool (box_refinement_downsample), which no 7x7 RoIAlign equals at the adaptive ratio. What the
# fixed ratio of safpn_ejhead_efficient.py (7x7 at 2 = 14x14 at 1, averaged) costs or gains in AP.
from .safpn_ejhead_efficient import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.box_pooler.update(output_size=14, sampling_ratio=0)
model.roi_heads.box_refinement_downsample = 2
