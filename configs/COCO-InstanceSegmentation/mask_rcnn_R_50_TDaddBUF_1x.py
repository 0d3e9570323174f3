# Paper Table 3 "TD-FPN add BUF-FPN" (37.0 / 33.9): the two pathways summed per level, no 1x1 conv.
from .mask_rcnn_R_50_SAFPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.mode = "td+buf"
