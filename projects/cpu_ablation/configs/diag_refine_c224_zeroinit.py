# Diagnostic (docs/ablation.md, "Diagnostics" (f)): diag_refine_c224 with the last conv of the
# residual branch initialised at zero, so that the refinement starts as the identity.
from .diag_refine_c224 import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.refinement.zero_init_last = True
