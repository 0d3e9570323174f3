# Table 2 "Cascade Mask R-CNN + SA-FPN + EJ-Head", demo-sized: EJCascadeROIHeads (14x14 RoIs in
# every stage, one shared residual refinement, interleaving on the last stage's boxes) with the
# EJ-Head of safpn_ejhead.py, as the model zoo's cascade_mask_rcnn_safpn_ejhead.py.
from detectron2.config import LazyConfig

from sa_ejhead.model_zoo import get_config_file

from .cascade_baseline import dataloader, lr_multiplier, model, optimizer, train
from .safpn_ejhead import model as _ours

ej_cascade_roi_heads = LazyConfig.load(
    get_config_file("common/models/cascade_mask_rcnn_safpn_ejhead.py"), "ej_cascade_roi_heads"
)
model.backbone = _ours.backbone
model.roi_heads = ej_cascade_roi_heads(model.roi_heads, _ours.roi_heads)
model.roi_heads.update(
    box_refinement_downsample=1,
    interleave_max_positives=128,
    threaded_pooling=True,  # speed only (the ablation runs on CPUs)
)
