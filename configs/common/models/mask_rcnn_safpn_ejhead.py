# Mask R-CNN + SA-FPN + EJ-Head (paper Table 2 "Ours"): the SA-FPN neck of mask_rcnn_safpn.py and
# the EJ-Head ROI heads of mask_rcnn_ejhead.py (see that file for the switches).
from .mask_rcnn_ejhead import model as _ejhead_model
from .mask_rcnn_safpn import model

model.roi_heads = _ejhead_model.roi_heads
