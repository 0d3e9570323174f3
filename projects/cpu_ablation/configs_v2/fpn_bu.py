# v2 Table 3 "BU-FPN": the SA-FPN row's neck in mode "bu" (bottom-up pathway alone).
from .safpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.mode = "bu"
