# v2 Table 3 "BUF-FPN": the SA-FPN row's neck in mode "buf" (bottom-up-fusion pathway alone).
from .safpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.mode = "buf"
