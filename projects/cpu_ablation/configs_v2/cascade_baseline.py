# v2 Table 2 "Cascade Mask R-CNN": the baseline with Detectron2's CascadeROIHeads (3 stages, 7x7
# box RoIs), box heads and predictors at the protocol's widths.
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from ._settings import CHANNELS, FC_DIM
from .baseline import dataloader, lr_multiplier, model, optimizer, train

_roi = model.roi_heads
model.roi_heads = get_config("common/models/cascade_rcnn.py").model.roi_heads
for _key in (
    "num_classes",
    "batch_size_per_image",
    "positive_fraction",
    "box_pooler",
    "mask_pooler",
    "mask_head",
):
    model.roi_heads[_key] = _roi[_key]
for _head in model.roi_heads.box_heads:
    _head.input_shape = ShapeSpec(channels=CHANNELS, height=7, width=7)
    _head.fc_dims = [FC_DIM, FC_DIM]
for _predictor in model.roi_heads.box_predictors:
    _predictor.input_shape = ShapeSpec(channels=FC_DIM)
