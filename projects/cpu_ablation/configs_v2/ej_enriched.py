# v2 Table 4 "Enriched Feature" only: 14x14 box RoIs flattened into fc1 (at (7/14)^2 of the lr);
# no refinement, no interleaving.
from .ejhead import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.refinement = None
model.roi_heads.interleave = False
