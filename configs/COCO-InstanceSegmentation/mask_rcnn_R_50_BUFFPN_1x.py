# Paper Table 3 "BUF-FPN" (Fig. 2c; 36.8 / 33.7): bottom-up pathway fusing both neighbouring levels.
from .mask_rcnn_R_50_SAFPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.mode = "buf"
