# v2 Table 2 "Mask R-CNN + EJ-Head" = Table 4 last row: Ours with the plain TD-FPN neck (SAFPN
# mode "td" is Detectron2's FPN, parameter names included).
from .safpn_ejhead import dataloader, lr_multiplier, model, optimizer, train

model.backbone.mode = "td"
