# The from-scratch demo of sa-ejhead <= 0.x (make demo before the pre-trained backbone): Mask
# R-CNN + SA-FPN + EJ-Head trained from scratch on SA-Shapes, at a reduced input size. Kept because
# the CPU ablation's protocol v1 (projects/cpu_ablation/configs/) and the backbone pre-training
# (projects/pretrain_backbone/) are built on it; `make demo` now runs sa_shapes.py. What it keeps
# of the paper, and what it shrinks (paper / COCO values in brackets):
#   SA-FPN "sa" neck with its own BUF laterals; EJ-Head with 14x14 "Enriched" RoIs flattened into
#   the first fc, the shared residual Boundary Refinement (with the efficiency lever
#   bottleneck_channels=16) and interleaving;
#   ResNet-18 at half width with BatchNorm, from scratch;
#   SA-FPN / RPN / RoI features 64 channels (256), box fcs 256 (1024), 2 mask convs (4),
#   32 sampled RoIs per image (512), 1000/500 RPN proposals before NMS (2000/1000, train/test)
#   and 500/200 after (1000/1000);
#   anchors 8..128 px (32..512) and RoI level assignment at canonical size 36 (224 on COCO,
#   scaled by its 128-px test shorter side over COCO's 800 px: RoIs then span only 2-4 feature
#   cells, see docs/ablation.md, diagnostic (c)).
# Baseline twin: sa_shapes_scratch_baseline.py.
from detectron2.model_zoo import get_config

from ..common.data.sa_shapes import dataloader  # at its sizes (shorter side 112-144, 128 at test)
from ..common.models.mask_rcnn_safpn_ejhead import model
from ..common.sa_shapes_cpu import CHANNELS, cosine_schedule, cpu_train, small_mask_rcnn

# --- backbone: ResNet-18 at half width (32..256 channels), BN, from scratch; RPN and heads -------
small_mask_rcnn(model, norm="BN")

# --- EJ-Head ----------------------------------------------------------------------------------
roi = model.roi_heads
roi.batch_size_per_image = 32
roi.interleave_max_positives = 32
roi.box_pooler.canonical_box_size = 36  # 224 * 128 / 800: COCO's level assignment, rescaled
roi.mask_pooler.canonical_box_size = 36
# shared residual Boundary Refinement (box + mask RoIs) with the efficiency lever
# bottleneck_channels=16 (1x1 64->16, two 3x3, 1x1 16->64): the faithful block on all 64 channels
# costs ~0.25 CPU-s more per iteration here
roi.refinement.update(channels=CHANNELS, bottleneck_channels=16)
roi.threaded_pooling = True  # speed only: RoIAlign on every CPU thread

# --- schedule ---------------------------------------------------------------------------------
# AdamW (weight decay 0 on norms/biases as in common/optim.py): from scratch it learns faster
# per iteration than SGD; at 300 iterations box AP 1.7 vs 0.6 with SGD lr 0.01 (docs/demo.md)
optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 1e-3
optimizer.weight_decay = 0.05
# cosine decay after a linear warm-up: the schedule follows train.max_iter (make demo ITERS=N)
lr_multiplier = cosine_schedule(end_value=0.02)

train = cpu_train(output_dir="output/demo", max_iter=1500)
