# Table 2 "Mask R-CNN, ResNet101-FPN", demo-sized: the deeper backbone of the demo family is the
# ResNet-34 layout (3, 4, 6, 3 BasicBlocks instead of ResNet-18's 2, 2, 2, 2; the demo's widths),
# as R-50 -> R-101 deepens the COCO model.
from ._deeper import deepen
from .baseline import dataloader, lr_multiplier, model, optimizer, train

deepen(model.backbone.bottom_up.stages)
