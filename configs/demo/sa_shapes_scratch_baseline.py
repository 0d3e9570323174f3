# Baseline twin of sa_shapes_scratch.py: Mask R-CNN with Detectron2's plain FPN and
# StandardROIHeads (7x7 RoIs, no refinement, no interleaving); same backbone, widths, data and
# schedule.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import FPN
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, StandardROIHeads

from ..common.models.mask_rcnn_ejhead import EJ_HEAD_ARGUMENTS
from ..common.sa_shapes_cpu import CHANNELS, FC_DIM
from .sa_shapes_scratch import dataloader, lr_multiplier, model, optimizer, train

model.backbone._target_ = FPN
for key in ("mode", "share_laterals", "fuse_position", "td_only_levels"):
    model.backbone.pop(key)

roi = model.roi_heads
roi._target_ = StandardROIHeads
for key in EJ_HEAD_ARGUMENTS + ("threaded_pooling",):
    roi.pop(key)
roi.box_pooler.output_size = 7
roi.box_head = L(FastRCNNConvFCHead)(
    input_shape=ShapeSpec(channels=CHANNELS, height=7, width=7),
    conv_dims=[],
    fc_dims=[FC_DIM, FC_DIM],
)

train.output_dir = "output/demo_baseline"
