# Table 2 "Mask R-CNN + SA-FPN" = Table 3 "SA-FPN (TD-FPN concat BUF-FPN)": the baseline with the
# SA-FPN neck (faithful: own BUF laterals, 3x3 stride-2 downsample convs, fuse after the outputs).
from sa_ejhead.modeling import SAFPN

from .baseline import dataloader, lr_multiplier, model, optimizer, train

model.backbone.update(
    _target_=SAFPN,
    mode="sa",
    share_laterals=False,
    fuse_position="after",
    td_only_levels=[],
)
