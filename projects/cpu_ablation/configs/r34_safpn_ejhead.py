# Table 2 "Mask R-CNN + SA-FPN + EJ-Head (Ours), ResNet101-FPN", demo-sized: ResNet-34 layout
# (see r34_baseline.py).
from ._deeper import deepen
from .safpn_ejhead import dataloader, lr_multiplier, model, optimizer, train

deepen(model.backbone.bottom_up.stages)
