# Mask R-CNN with the SA-FPN neck (paper Table 2 "Mask R-CNN + SA-FPN"): Detectron2's
# common/models/mask_rcnn_fpn.py with its FPN swapped for SAFPN; bottom-up, in_features,
# out_channels and top_block (p6 = LastLevelMaxPool) are kept. The efficiency levers are spelled
# out at their faithful values (SAFPN's docstring; their costs: docs/safpn.md).
from detectron2.model_zoo import get_config

from sa_ejhead.modeling import SAFPN

model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.update(
    _target_=SAFPN,
    mode="sa",  # "td" | "bu" | "buf" | "td+buf" | "sa"
    share_laterals=False,
    fuse_position="after",  # "after" | "before"
    td_only_levels=[],  # e.g. ["p2"]
)
