# Paper Table 2 "Mask R-CNN, ResNet101-FPN" (39.4 / 35.9), 12 epochs.
from .mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
