# Table 5 "Simple Conv x 3": 3 stacked 3x3 conv + ReLU, no shortcut, in place of the Boundary
# Refinement (7x7 box RoIs, no interleaving, as ej_refine.py).
from .ej_refine import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.refinement.mode = "conv3"
