# Mask R-CNN + SA-FPN + EJ-Head, efficient setting (not in the paper; 1.09x the FLOPs of Mask
# R-CNN R50-FPN, CPU costs in docs/benchmark.md), ResNet-50, 12 epochs as
# mask_rcnn_R_50_SAFPN_EJHead_1x.py.
from ..common.coco_sa import dataloader
from ..common.coco_schedule_sa import lr_multiplier_12ep as lr_multiplier, optimizer
from ..common.coco_schedule_sa import train_12ep as train
from ..common.models.mask_rcnn_safpn_ejhead_efficient import model

model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
