# Paper Table 2 "Mask R-CNN + SA-FPN + EJ-Head (Ours), ResNet50-FPN" (38.9 / 35.5), 12 epochs.
from ..common.coco_sa import dataloader
from ..common.coco_schedule_sa import lr_multiplier_12ep as lr_multiplier
from ..common.coco_schedule_sa import optimizer_enriched as optimizer
from ..common.coco_schedule_sa import train_12ep as train
from ..common.models.mask_rcnn_safpn_ejhead import model

model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
