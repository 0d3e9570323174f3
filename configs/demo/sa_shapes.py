# make demo: Mask R-CNN + SA-FPN + EJ-Head (the paper's faithful model: SA-FPN "sa" neck;
# EJ-Head with 14x14 box RoIs flattened into the first fc, the shared residual Boundary Refinement
# on all channels and interleaving) fine-tuned on the embedded SA-Shapes data (192x256 images,
# 5 classes) on a 2-core CPU, from the committed pre-trained backbone. Widths and counts are
# shrunk for the CPU; the geometry and the recipe follow the paper's COCO setting (paper / COCO
# values in brackets):
#   ResNet-18 at half width (32..256 channels), FrozenBN, stem and res2 frozen, initialised from
#   sa_ejhead://pretrained/sa_shapes_R18half_pretrain.pth (trained as a detector on the separate
#   sa_shapes_pretrain set: projects/pretrain_backbone/) [ImageNet ResNet-50, FrozenBN];
#   images at native scale, shorter side 160-224 in training and 192 at test, and RoI level
#   assignment at COCO's canonical box size 224, so that RoIs span as many feature cells as on
#   COCO [640-800 / 800, 224];
#   SA-FPN / RPN / RoI features 64 channels [256], box fcs 256 [1024], 2 mask convs [4];
#   anchors 8..128 px [32..512]; 1000/500 RPN proposals before NMS and 500/200 after
#   [2000/1000, 1000/1000]; 64 sampled RoIs per image with at most 16 positives, the same cap
#   for the interleaved mask branch [512, 128];
#   SGD lr 0.01 at batch 4, momentum 0.9, weight decay 1e-4, 10% warm-up and cosine decay
#   [SGD 0.02 at batch 16, steps], the Enriched Feature's fc1 at (7/14)^2 of the lr
#   (docs/design.md); 1200 iterations = 12 epochs of the 400 images [12 epochs].
# The recipe (everything but the model) is configs/common/sa_shapes_cpu.py's. The CPU ablation's
# protocol v2 takes it from there too (projects/cpu_ablation/configs_v2/_settings.py): its row
# "SA-FPN + EJ-Head" is this config but for where and how often it writes and evaluates
# (tests/test_demo_configs.py), so that row's 3 seeds are the demo's: docs/demo.md. Baseline twin:
# sa_shapes_baseline.py. The from-scratch demo of earlier versions: sa_shapes_scratch.py.
from sa_ejhead.model_zoo import get_config
from sa_ejhead.modeling import enriched_fc1_lr_factor

from ..common.sa_shapes_cpu import apply_demo_settings, dataloader, lr_multiplier, optimizer, train

# SA-FPN + EJ-Head: 14x14 box RoIs flattened into the first fc (the Enriched Feature), which
# learns at (7/14)^2 of the lr (docs/design.md)
model = apply_demo_settings(get_config("common/models/mask_rcnn_safpn_ejhead.py").model)
optimizer.params.lr_factor_func = enriched_fc1_lr_factor(14, 7)
