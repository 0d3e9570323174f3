# Pre-training of the ResNet-34 layout of the demo backbone (3, 4, 6, 3 BasicBlocks at the same
# half widths), for the deeper-backbone rows of the ablation (projects/cpu_ablation/configs_v2/
# r34_*.py, the analogue of the paper's ResNet-101 rows). Everything else is pretrain_config.py:
# the same detector, data, seed, optimizer and length; only the depth and the output differ.
from .pretrain_config import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

BLOCKS = (3, 4, 6, 3)
for _stage, _n in zip(model.backbone.bottom_up.stages, BLOCKS):
    _stage.num_blocks = _n
    _stage.stride_per_block = _stage.stride_per_block[:1] + [1] * (_n - 1)

train.output_dir = "output/pretrain_backbone_r34"
