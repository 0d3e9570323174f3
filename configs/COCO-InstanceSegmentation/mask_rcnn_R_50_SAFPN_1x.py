# Paper Table 2 "Mask R-CNN + SA-FPN" (37.8 / 34.6) = Table 3 "SA-FPN (TD-FPN concat BUF-FPN)"
# (37.9 / 34.8): the SA-FPN neck with Mask R-CNN's heads, 12 epochs.
from ..common.coco_sa import dataloader
from ..common.coco_schedule_sa import lr_multiplier_12ep as lr_multiplier, optimizer
from ..common.coco_schedule_sa import train_12ep as train
from ..common.models.mask_rcnn_safpn import model

model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
