# Table 4 "Interleaving + Enriched Feature": no refinement.
from .ejhead import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.refinement = None
