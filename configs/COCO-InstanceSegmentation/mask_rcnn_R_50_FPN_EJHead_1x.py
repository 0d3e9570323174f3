# Paper Table 2 "Mask R-CNN + EJ-Head" (38.2 / 34.8) = Table 4 last row (all three; 38.3 / 34.8):
# Detectron2's FPN with the EJ-Head: 14x14 box RoIs flattened into fc1 ("Enriched Feature"), the
# shared residual Boundary Refinement, Interleaving. 12 epochs.
from ..common.coco_sa import dataloader
from ..common.coco_schedule_sa import lr_multiplier_12ep as lr_multiplier
from ..common.coco_schedule_sa import optimizer_enriched as optimizer
from ..common.coco_schedule_sa import train_12ep as train
from ..common.models.mask_rcnn_ejhead import model

model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
