# Table 2 "Mask R-CNN (Baseline)" = Table 3 "TD-FPN" = Tables 4/5 first rows, demo-sized: the
# from-scratch demo's baseline, configs/demo/sa_shapes_scratch_baseline.py (ResNet-18 BN from
# scratch, FPN 64 ch, StandardROIHeads 7x7, fc 256).
from sa_ejhead.model_zoo import get_config

_base = get_config("demo/sa_shapes_scratch_baseline.py")
model, dataloader, train = _base.model, _base.dataloader, _base.train
optimizer, lr_multiplier = _base.optimizer, _base.lr_multiplier
