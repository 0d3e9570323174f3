# Paper Table 3 "BU-FPN" (Fig. 2b; 34.6 / 31.8): bottom-up pathway fusing the shallower level only.
from .mask_rcnn_R_50_SAFPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.mode = "bu"
