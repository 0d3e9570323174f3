# v2 Table 4 "Interleaving + Enriched Feature": EJ-Head without the refinement.
from .ejhead import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.refinement = None
