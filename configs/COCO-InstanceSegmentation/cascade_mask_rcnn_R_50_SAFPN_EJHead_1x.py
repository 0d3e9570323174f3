# Paper Table 2 "Cascade Mask R-CNN + SA-FPN + EJ-Head, ResNet50-FPN" (42.8 / 36.9), 12 epochs:
# 2000 RPN proposals per image in training, as cascade_mask_rcnn_R_50_FPN_1x.py.
from ..common.coco_sa import dataloader
from ..common.coco_schedule_sa import lr_multiplier_12ep as lr_multiplier
from ..common.coco_schedule_sa import optimizer_enriched_cascade as optimizer
from ..common.coco_schedule_sa import train_12ep as train
from ..common.models.cascade_mask_rcnn_safpn_ejhead import model

model.backbone.bottom_up.freeze_at = 2
model.proposal_generator.post_nms_topk = (2000, 1000)
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
