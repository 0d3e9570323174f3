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
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.resnet import BasicBlock
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler


from ..common.data.sa_shapes import dataloader
from ..common.models.mask_rcnn_safpn_ejhead import model

CHANNELS = 64  # FPN / RoI feature width
FC_DIM = 256

# --- backbone: ResNet-18 at half width (32..256 channels), BN, from scratch ---------------------
WIDTH = 32
model.backbone.bottom_up.stem.update(out_channels=WIDTH, norm="BN")
model.backbone.bottom_up.stages = [
    L(ResNet.make_stage)(
        block_class=BasicBlock,
        num_blocks=2,
        stride_per_block=[stride, 1],
        in_channels=WIDTH * max(1, 2 ** (i - 1)),
        out_channels=WIDTH * 2**i,
        norm="BN",
    )
    for i, stride in enumerate([1, 2, 2, 2])
]
model.backbone.out_channels = CHANNELS
model.pixel_mean = [103.53, 116.28, 123.675]
model.pixel_std = [57.375, 57.12, 58.395]  # from scratch: normalize to unit variance

# --- RPN --------------------------------------------------------------------------------------
model.proposal_generator.head.in_channels = CHANNELS
model.proposal_generator.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (500, 200)

# --- EJ-Head ----------------------------------------------------------------------------------
roi = model.roi_heads
roi.num_classes = 5
roi.batch_size_per_image = 32
roi.interleave_max_positives = 32
roi.box_pooler.canonical_box_size = 36  # 224 * 128 / 800: COCO's level assignment, rescaled
roi.mask_pooler.canonical_box_size = 36
# shared residual Boundary Refinement (box + mask RoIs) with the efficiency lever
# bottleneck_channels=16 (1x1 64->16, two 3x3, 1x1 16->64): the faithful block on all 64 channels
# costs ~0.25 CPU-s more per iteration here
roi.refinement.update(channels=CHANNELS, bottleneck_channels=16)
roi.box_head.input_shape = ShapeSpec(channels=CHANNELS, height=14, width=14)
roi.box_head.fc_dims = [FC_DIM, FC_DIM]  # box_fc_input="flatten": 64*14*14 -> 256, faithful
roi.box_predictor.input_shape = ShapeSpec(channels=FC_DIM)
roi.mask_head.input_shape = ShapeSpec(channels=CHANNELS, height=14, width=14)
roi.mask_head.conv_dims = [CHANNELS, CHANNELS, CHANNELS]  # 2 convs + the deconv's width

# --- data: configs/common/data/sa_shapes.py -----------------------------------------------

# --- schedule ---------------------------------------------------------------------------------
# AdamW (weight decay 0 on norms/biases as in common/optim.py): from scratch it learns faster
# per iteration than SGD; at 300 iterations box AP 1.7 vs 0.6 with SGD lr 0.01 (docs/demo.md)
optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 1e-3
optimizer.weight_decay = 0.05
# cosine decay after a linear warm-up: the schedule follows train.max_iter (make demo ITERS=N)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.02),
    warmup_length=0.1,
    warmup_factor=0.01,
)

train = get_config("common/train.py").train
train.update(
    output_dir="output/demo",
    max_iter=1500,
    eval_period=0,  # evaluate once, after the last iteration
    log_period=20,
    checkpointer=dict(period=100000, max_to_keep=1),  # model_final.pth only
    device="cpu",
    seed=0,
)
