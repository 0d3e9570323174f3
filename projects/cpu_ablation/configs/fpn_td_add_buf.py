# Table 3 "TD-FPN add BUF-FPN": the two pathways summed per level (no 1x1 fuse conv).
from .safpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.mode = "td+buf"
