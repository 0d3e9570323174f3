# Protocol v2 of the CPU ablation (docs/ablation.md, "Method"): what every row shares. Not a row;
# each row is a few lines on top of baseline.py or safpn_ejhead.py, which apply these settings to
# Detectron2's Mask R-CNN and to the model zoo's SA-FPN + EJ-Head model. They are the recipe of
# `make demo` (configs/common/sa_shapes_cpu.py; configs/demo/sa_shapes.py lists its values beside
# the paper's), so the rows baseline and safpn_ejhead are the demo's two configs but for where and
# how often a run writes and evaluates (tests/test_demo_configs.py). A change of the recipe
# changes the rows' config hashes, so it starts new runs and never alters the results of the old
# ones (ablation/store.py). The rows that flatten 14x14 RoIs into fc1 set its lr factor.
from detectron2.config import LazyConfig

from sa_ejhead.model_zoo import get_config_file

_CPU = get_config_file("common/sa_shapes_cpu.py")
CHANNELS, FC_DIM, small_resnet = LazyConfig.load(_CPU, ("CHANNELS", "FC_DIM", "small_resnet"))
apply_settings, dataloader, optimizer, lr_multiplier, train = LazyConfig.load(
    _CPU, ("apply_demo_settings", "dataloader", "optimizer", "lr_multiplier", "train")
)
train.update(
    output_dir="output/cpu_ablation_v2/run",
    eval_period=300,  # the AP curve of every run (results.json "curve")
    checkpointer=dict(period=100, max_to_keep=1),
)
