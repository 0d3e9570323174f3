# Table 3 "BU-FPN": the bottom-up pathway alone (mode="bu") in place of the FPN.
from .safpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.mode = "bu"
