# Diagnostic (docs/ablation.md, "Diagnostics" (b)): diag_baseline_c224 with 4x the learning rate on
# the box head's first fc only, the step a 14x14 flattened input gives fc1 (sa_ejhead.modeling.box_head).
from sa_ejhead.modeling import ENRICHED_FC1, ParamLRFactor

from .diag_baseline_c224 import dataloader, lr_multiplier, model, optimizer, train

optimizer.params.lr_factor_func = ParamLRFactor(ENRICHED_FC1, 4.0)
