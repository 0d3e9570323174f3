# Paper Table 2 "Mask R-CNN + SA-FPN + EJ-Head (Ours), ResNet101-FPN" (41.0 / 37.3), 12 epochs.
from .mask_rcnn_R_50_SAFPN_EJHead_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
