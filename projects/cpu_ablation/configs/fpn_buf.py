# Table 3 "BUF-FPN": the bottom-up pathway alone (mode="buf") in place of the FPN.
from .safpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.mode = "buf"
