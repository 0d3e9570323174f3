# Diagnostic (docs/ablation.md, "Diagnostics" (b)): diag_enriched_c224 with the box head's first fc
# at (7/14)^2 = 0.25x the learning rate, the step of the 7x7 head (sa_ejhead.modeling.box_head).
from sa_ejhead.modeling import enriched_fc1_lr_factor

from .diag_enriched_c224 import dataloader, lr_multiplier, model, optimizer, train

optimizer.params.lr_factor_func = enriched_fc1_lr_factor(14, 7)
