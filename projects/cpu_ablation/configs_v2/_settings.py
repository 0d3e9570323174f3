# Protocol v2 of the CPU ablation (docs/ablation.md): what every row shares. Not a row; each row
# is a few lines on top of baseline.py or safpn_ejhead.py, which apply these settings to
# Detectron2's Mask R-CNN and to the model zoo's SA-FPN + EJ-Head model. `make demo` trains the
# same two models (configs/demo/sa_shapes.py, sa_shapes_baseline.py); the ablation keeps its own
# copy of the settings, so tuning the demo never changes a v2 row, and tests/test_demo_configs.py
# fails when the two part. Paper (COCO) values in brackets.
#
# - Backbone: ResNet-18 at half width (32..256 channels), FrozenBN, stem and res2 frozen
#   (freeze_at=2), initialised from the committed pre-trained weights (the stand-in for ImageNet:
#   projects/pretrain_backbone/). [ResNet-50, ImageNet, FrozenBN, freeze_at=2]
# - Geometry: images at their native scale (shorter side 192 at test, 160-224 in training) and
#   RoIs assigned to pyramid levels at COCO's canonical box size 224, so that a RoI spans about
#   as many feature cells as on COCO (docs/ablation.md, diagnostic (c)). [800, 640-800 in the
#   multi-scale 3x schedules; 224]
# - Widths: 64-channel features, box fcs 256, 2 mask convs. [256, 1024, 4]
# - RoIs: 64 sampled per image with at most 25% positives, and the same cap of 16 positives for
#   the interleaved mask branch, so that every mask head trains on as many RoIs. [512, 25%, 128]
# - Optimizer: SGD, momentum 0.9, weight decay 1e-4, lr 0.01 at batch 4 with a linear warm-up and
#   cosine decay (docs/ablation.md, "Choosing the optimizer"). [SGD 0.02 at batch 16, steps]
# - The Enriched Feature's first fc learns at (7/14)^2 of the base lr (sa_ejhead.solver;
#   docs/design.md), set by the rows that flatten 14x14 RoIs into fc1.
import torch
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config as get_detectron2_config
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.resnet import BasicBlock
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import CosineParamScheduler

from sa_ejhead.model_zoo import get_config

PRETRAINED = "sa_ejhead://pretrained/sa_shapes_R18half_pretrain.pth"
WIDTH = 32  # ResNet stem width; stages 32, 64, 128, 256
CHANNELS = 64  # FPN / RoI feature width
FC_DIM = 256
ROIS_PER_IMAGE = 64
MAX_POSITIVES = 16  # = ROIS_PER_IMAGE * 0.25, Detectron2's positive fraction
CANONICAL_BOX_SIZE = 224


def small_resnet(bottom_up, blocks=(2, 2, 2, 2)):
    """ResNet-18 layout (or ``blocks``) at half width with FrozenBN, stem and res2 frozen."""
    bottom_up.stem.update(out_channels=WIDTH, norm="FrozenBN")
    bottom_up.stages = [
        L(ResNet.make_stage)(
            block_class=BasicBlock,
            num_blocks=n,
            stride_per_block=[stride] + [1] * (n - 1),
            in_channels=WIDTH * max(1, 2 ** (i - 1)),
            out_channels=WIDTH * 2**i,
            norm="FrozenBN",
        )
        for i, (n, stride) in enumerate(zip(blocks, [1, 2, 2, 2]))
    ]
    bottom_up.freeze_at = 2


def apply_settings(model):
    """Apply the protocol's backbone, RPN and RoI settings to a Mask R-CNN model config (with
    Detectron2's StandardROIHeads or sa_ejhead's EJROIHeads)."""
    small_resnet(model.backbone.bottom_up)
    model.backbone.out_channels = CHANNELS
    # the pre-training's normalisation (projects/pretrain_backbone)
    model.pixel_mean = [103.53, 116.28, 123.675]
    model.pixel_std = [57.375, 57.12, 58.395]

    rpn = model.proposal_generator
    rpn.head.in_channels = CHANNELS
    rpn.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
    rpn.pre_nms_topk = (1000, 500)
    rpn.post_nms_topk = (500, 200)

    roi = model.roi_heads
    roi.num_classes = 5
    roi.batch_size_per_image = ROIS_PER_IMAGE
    roi.positive_fraction = 0.25
    roi.box_pooler.canonical_box_size = CANONICAL_BOX_SIZE
    roi.mask_pooler.canonical_box_size = CANONICAL_BOX_SIZE
    side = roi.box_pooler.output_size
    roi.box_head.input_shape = ShapeSpec(channels=CHANNELS, height=side, width=side)
    roi.box_head.fc_dims = [FC_DIM, FC_DIM]
    roi.box_predictor.input_shape = ShapeSpec(channels=FC_DIM)
    roi.mask_head.input_shape = ShapeSpec(channels=CHANNELS, height=14, width=14)
    roi.mask_head.conv_dims = [CHANNELS, CHANNELS, CHANNELS]  # 2 convs + the deconv's width
    if "refinement" in roi:  # EJROIHeads
        roi.interleave_max_positives = MAX_POSITIVES
        roi.refinement.channels = CHANNELS
        roi.refinement.last_relu = False  # Table 5's rows differ in the shortcut only
    return model


# the SA-Shapes loaders of configs/common/data/sa_shapes.py at native scale
dataloader = get_config("common/data/sa_shapes.py").dataloader
dataloader.train.mapper.augmentations[0].update(
    short_edge_length=(160, 176, 192, 208, 224), max_size=320
)
dataloader.test.mapper.augmentations[0].update(short_edge_length=192, max_size=320)

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(base_lr="${..lr}", weight_decay_norm=0.0),
    lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.01),
    warmup_length=0.1,
    warmup_factor=0.01,
)

train = get_detectron2_config("common/train.py").train
train.update(
    init_checkpoint=PRETRAINED,
    output_dir="output/cpu_ablation_v2/run",
    max_iter=1200,  # 12 epochs of the 400 images, as the paper's 1x schedule
    eval_period=300,  # the AP curve of every run (results.json "curve")
    log_period=20,
    checkpointer=dict(period=100, max_to_keep=1),
    device="cpu",
    seed=0,
)
