# Paper Table 2 "Cascade Mask R-CNN, ResNet50-FPN" (41.3 / 35.7), 12 epochs: Detectron2's
# Cascade Mask R-CNN (3 stages, IoU 0.5/0.6/0.7), 2000 RPN proposals per image in training as
# Detectron2's Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml.
from detectron2.model_zoo import get_config

from ..common.coco_sa import dataloader
from ..common.coco_schedule_sa import lr_multiplier_12ep as lr_multiplier, optimizer
from ..common.coco_schedule_sa import train_12ep as train

model = get_config("common/models/cascade_rcnn.py").model
model.backbone.bottom_up.freeze_at = 2
model.proposal_generator.post_nms_topk = (2000, 1000)
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
