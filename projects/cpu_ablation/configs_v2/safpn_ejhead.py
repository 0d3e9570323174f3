# v2 Table 2 "Mask R-CNN + SA-FPN + EJ-Head (Ours)": the model zoo's faithful model (SA-FPN "sa"
# neck; EJ-Head: 14x14 box RoIs flattened into fc1, shared residual Boundary Refinement on all
# channels, interleaving) with the protocol's settings; fc1 at (7/14)^2 of the lr.
from sa_ejhead.model_zoo import get_config
from sa_ejhead.modeling import enriched_fc1_lr_factor

from ._settings import apply_settings, dataloader, lr_multiplier, optimizer, train

model = apply_settings(get_config("common/models/mask_rcnn_safpn_ejhead.py").model)
optimizer.params.lr_factor_func = enriched_fc1_lr_factor(14, 7)
