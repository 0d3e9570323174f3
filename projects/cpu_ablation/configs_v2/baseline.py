# v2 Table 2 "Mask R-CNN (Baseline)" = Table 3 "TD-FPN" = Tables 4/5 first rows: Detectron2's
# Mask R-CNN (FPN, StandardROIHeads with 7x7 box RoIs) with the protocol's settings.
from detectron2.model_zoo import get_config

from ._settings import apply_settings, dataloader, lr_multiplier, optimizer, train

model = apply_settings(get_config("common/models/mask_rcnn_fpn.py").model)
