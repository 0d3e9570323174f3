# v2 Table 2 "Cascade Mask R-CNN + SA-FPN + EJ-Head": the cascade baseline with the SA-FPN neck and
# EJCascadeROIHeads with the EJ-Head of safpn_ejhead.py, as the model zoo's
# cascade_mask_rcnn_safpn_ejhead.py (14x14 box RoIs flattened into each stage's fc1 at (7/14)^2 of
# the lr, the shared residual refinement, interleaving on the last stage's boxes, with the
# protocol's cap).
from detectron2.config import LazyConfig

from sa_ejhead.model_zoo import get_config_file
from sa_ejhead.modeling import enriched_fc1_lr_factor

from .cascade_baseline import dataloader, lr_multiplier, model, optimizer, train
from .safpn_ejhead import model as _ours

ej_cascade_roi_heads = LazyConfig.load(
    get_config_file("common/models/cascade_mask_rcnn_safpn_ejhead.py"), "ej_cascade_roi_heads"
)
model.backbone = _ours.backbone
model.roi_heads = ej_cascade_roi_heads(model.roi_heads, _ours.roi_heads)
# threaded_pooling: speed only (the ablation runs on CPUs)
model.roi_heads.update(box_refinement_downsample=1, threaded_pooling=True)
optimizer.params.lr_factor_func = enriched_fc1_lr_factor(14, 7, num_stages=3)
