# Paper Table 4 "Enriched Feature" only (37.6 / 34.4): 14x14 box RoIs flattened into fc1; no
# refinement, no interleaving.
from .mask_rcnn_R_50_FPN_EJHead_1x import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.interleave = False
model.roi_heads.refinement = None
