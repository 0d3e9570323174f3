# Table 2 "Mask R-CNN + EJ-Head" = Table 4 last row: the demo model with a plain TD-FPN neck
# (SAFPN mode="td" is Detectron2's FPN) and the full EJ-Head.
from .safpn_ejhead import dataloader, lr_multiplier, model, optimizer, train

model.backbone.mode = "td"
