# Paper Table 4 "Interleaving + Enriched Feature" (37.7 / 34.7): no refinement.
from .mask_rcnn_R_50_FPN_EJHead_1x import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.interleave = True
model.roi_heads.refinement = None
