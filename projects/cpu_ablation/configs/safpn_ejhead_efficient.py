# The efficient setting (configs/common/models/mask_rcnn_safpn_ejhead_efficient.py), demo-sized:
# SA-FPN with shared laterals, fused before the output convs, TD-only p2; EJ-Head refinement on a
# quarter of the channels (16 of 64) and box RoIs refined and flattened at 7x7 (pooled from 14x14).
from detectron2.layers import ShapeSpec

from .safpn_ejhead import dataloader, lr_multiplier, model, optimizer, train

model.backbone.update(share_laterals=True, fuse_position="before", td_only_levels=["p2"])
model.roi_heads.refinement.bottleneck_channels = 16
model.roi_heads.box_refinement_downsample = 2
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
