# Table 4 "Enriched Feature" only: 14x14 box RoIs flattened into fc1; no refinement, no
# interleaving.
from .ejhead import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.refinement = None
model.roi_heads.interleave = False
