# Diagnostic (docs/ablation.md, "Diagnostics"): the v1 row ej_refine (Boundary Refinement only) with
# RoIs assigned to levels at COCO's canonical box size 224 instead of 36; nothing else changed.
from ._diag import coco_level_assignment
from .ej_refine import dataloader, lr_multiplier, model, optimizer, train

coco_level_assignment(model.roi_heads)
