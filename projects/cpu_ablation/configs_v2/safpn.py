# v2 Table 2 "Mask R-CNN + SA-FPN" = Table 3 "SA-FPN (TD-FPN concat BUF-FPN)": the model zoo's
# SA-FPN model (own BUF laterals and output convs, concat + 1x1 per level, StandardROIHeads) with
# the protocol's settings.
from sa_ejhead.model_zoo import get_config

from ._settings import apply_settings, dataloader, lr_multiplier, optimizer, train

model = apply_settings(get_config("common/models/mask_rcnn_safpn.py").model)
