# Paper Table 1 "Ours, ResNet101-FPN" (COCO test-dev 42.5 / 38.4): SA-FPN + EJ-Head on ResNet-101,
# 20 epochs. Evaluates on val2017; for test-dev set dataloader.test.dataset.names=coco_2017_test-dev
# (the evaluator then writes the results file to submit to the COCO server).
from ..common.coco_schedule_sa import lr_multiplier_20ep as lr_multiplier, train_20ep as train
from .mask_rcnn_R_101_SAFPN_EJHead_1x import dataloader, model, optimizer

train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
