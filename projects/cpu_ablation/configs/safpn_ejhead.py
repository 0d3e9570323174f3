# Table 2 "Mask R-CNN + SA-FPN + EJ-Head (Ours)", demo-sized: configs/demo/sa_shapes_scratch.py
# (SA-FPN "sa" neck, 14x14 RoIs flattened, shared residual refinement, interleaving) with the
# faithful refinement block on all channels (the from-scratch demo uses the bottleneck_channels=16
# lever; that is the efficient row, safpn_ejhead_efficient.py).
from sa_ejhead.model_zoo import get_config

_base = get_config("demo/sa_shapes_scratch.py")
model, dataloader, train = _base.model, _base.dataloader, _base.train
optimizer, lr_multiplier = _base.optimizer, _base.lr_multiplier
model.roi_heads.refinement.bottleneck_channels = 0
