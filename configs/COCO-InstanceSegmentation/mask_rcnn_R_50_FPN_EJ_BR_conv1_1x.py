# Paper Table 5 "Simple Conv x 1" (37.4 / 34.1): 1 stacked 3x3 conv + ReLU, no shortcut, in place of
# the Boundary Refinement (7x7 box RoIs, no interleaving, as Table 5's other rows).
from .mask_rcnn_R_50_FPN_EJ_refine_1x import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.refinement.mode = "conv1"
