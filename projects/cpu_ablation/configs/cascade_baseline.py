# Table 2 "Cascade Mask R-CNN", demo-sized: Detectron2's 3-stage cascade (IoU 0.5/0.6/0.7,
# class-agnostic regression) with the demo widths (fc 256, 64-channel RoIs).
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from .baseline import dataloader, lr_multiplier, model, optimizer, train

_demo_roi = model.roi_heads
model.roi_heads = get_config("common/models/cascade_rcnn.py").model.roi_heads
for _key in ("num_classes", "batch_size_per_image", "box_pooler", "mask_pooler", "mask_head"):
    model.roi_heads[_key] = _demo_roi[_key]
for _head in model.roi_heads.box_heads:
    _head.input_shape = ShapeSpec(channels=64, height=7, width=7)
    _head.fc_dims = [256, 256]
for _predictor in model.roi_heads.box_predictors:
    _predictor.input_shape = ShapeSpec(channels=256)
