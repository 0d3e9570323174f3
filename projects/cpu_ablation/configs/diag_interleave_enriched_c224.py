# Diagnostic (docs/ablation.md, "Diagnostics"): the v1 row ej_interleave_enriched (Interleaving +
# Enriched Feature) with RoIs assigned to levels at COCO's canonical box size 224 instead of 36;
# nothing else changed.
from ._diag import coco_level_assignment
from .ej_interleave_enriched import dataloader, lr_multiplier, model, optimizer, train

coco_level_assignment(model.roi_heads)
