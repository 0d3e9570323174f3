# Baseline twin of sa_shapes.py: Detectron2's Mask R-CNN (plain FPN, StandardROIHeads: 7x7 box
# RoIs, no refinement, no interleaving) with the same pre-trained backbone, widths, data,
# optimizer and schedule. The CPU ablation's protocol v2 "Mask R-CNN (Baseline)" row has the same
# settings (tests/test_demo_configs.py).
from detectron2.model_zoo import get_config

from ..common.sa_shapes_cpu import apply_demo_settings, dataloader, lr_multiplier, optimizer, train

model = apply_demo_settings(get_config("common/models/mask_rcnn_fpn.py").model)

train.output_dir = "output/demo_baseline"
