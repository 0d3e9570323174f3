# Paper Table 2 "Mask R-CNN (Baseline)" = Table 3 "TD-FPN" = Tables 4/5 first rows (37.2 / 34.1):
# Detectron2's Mask R-CNN R-50-FPN with the paper's data (800/1333) and 12-epoch schedule.
from detectron2.model_zoo import get_config

from ..common.coco_sa import dataloader
from ..common.coco_schedule_sa import lr_multiplier_12ep as lr_multiplier, optimizer
from ..common.coco_schedule_sa import train_12ep as train

model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
