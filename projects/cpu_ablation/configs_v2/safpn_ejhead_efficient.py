# v2 efficient SA-FPN + EJ-Head (not in the paper): the levers of the model zoo's
# mask_rcnn_safpn_ejhead_efficient.py at the protocol's widths (shared laterals, fuse before the
# output convs, p2 from the TD pathway alone; a 16-channel refinement branch; box RoIs pooled
# 7x7 at sampling ratio 2 = the 2x2 average of a 14x14 RoIAlign at ratio 1, so fc1 has 7x7 inputs
# and learns at the base lr).
from detectron2.layers import ShapeSpec

from ._settings import CHANNELS
from .safpn_ejhead import dataloader, lr_multiplier, model, optimizer, train

model.backbone.update(share_laterals=True, fuse_position="before", td_only_levels=["p2"])
model.roi_heads.refinement.bottleneck_channels = 16
model.roi_heads.box_pooler.update(output_size=7, sampling_ratio=2)
model.roi_heads.box_head.input_shape = ShapeSpec(channels=CHANNELS, height=7, width=7)
optimizer.params.lr_factor_func = None
