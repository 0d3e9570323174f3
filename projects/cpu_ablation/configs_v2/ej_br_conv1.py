# v2 Table 5 "Simple Conv x 1": ej_refine with 1 stacked 3x3 convs (ReLU between them, the last
# one linear, as the residual branch) and no shortcut.
from .ej_refine import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.refinement.mode = "conv1"
