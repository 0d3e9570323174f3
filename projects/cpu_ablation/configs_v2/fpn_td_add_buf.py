# v2 Table 3 "TD-FPN add BUF-FPN": the SA-FPN row's neck adding the two pathways per level
# instead of concatenating them (no 1x1 fuse).
from .safpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.mode = "td+buf"
