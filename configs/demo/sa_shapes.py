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
# These are the settings of the CPU ablation's protocol v2 row "SA-FPN + EJ-Head" (its own copy,
# projects/cpu_ablation/configs_v2/; tests/test_demo_configs.py checks that they agree), so
# that row's 3 seeds are the demo's: docs/demo.md. Baseline twin: sa_shapes_baseline.py.
# The from-scratch demo of earlier versions: sa_shapes_scratch.py.
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
from sa_ejhead.solver import enriched_fc1_lr_factor

from ..common.data.sa_shapes import dataloader

CHANNELS = 64  # FPN / RoI feature width
FC_DIM = 256
WIDTH = 32  # ResNet stem width; stages 32, 64, 128, 256
PRETRAINED = "sa_ejhead://pretrained/sa_shapes_R18half_pretrain.pth"


def apply_demo_settings(model):
    """The demo's backbone, RPN and RoI settings on a Mask R-CNN model config (Detectron2's
    StandardROIHeads or sa_ejhead's EJROIHeads)."""
    # ResNet-18 at half width, FrozenBN, stem and res2 frozen, pre-trained (train.init_checkpoint)
    bottom_up = model.backbone.bottom_up
    bottom_up.stem.update(out_channels=WIDTH, norm="FrozenBN")
    bottom_up.stages = [
        L(ResNet.make_stage)(
            block_class=BasicBlock,
            num_blocks=2,
            stride_per_block=[stride, 1],
            in_channels=WIDTH * max(1, 2 ** (i - 1)),
            out_channels=WIDTH * 2**i,
            norm="FrozenBN",
        )
        for i, stride in enumerate([1, 2, 2, 2])
    ]
    bottom_up.freeze_at = 2
    model.backbone.out_channels = CHANNELS
    model.pixel_mean = [103.53, 116.28, 123.675]  # the pre-training's normalisation
    model.pixel_std = [57.375, 57.12, 58.395]

    rpn = model.proposal_generator
    rpn.head.in_channels = CHANNELS
    rpn.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
    rpn.pre_nms_topk = (1000, 500)
    rpn.post_nms_topk = (500, 200)

    roi = model.roi_heads
    roi.num_classes = 5
    roi.batch_size_per_image = 64
    roi.positive_fraction = 0.25
    roi.box_pooler.canonical_box_size = 224
    roi.mask_pooler.canonical_box_size = 224
    side = roi.box_pooler.output_size  # 14: EJ-Head's Enriched Feature, 7: Mask R-CNN
    roi.box_head.input_shape = ShapeSpec(channels=CHANNELS, height=side, width=side)
    roi.box_head.fc_dims = [FC_DIM, FC_DIM]
    roi.box_predictor.input_shape = ShapeSpec(channels=FC_DIM)
    roi.mask_head.input_shape = ShapeSpec(channels=CHANNELS, height=14, width=14)
    roi.mask_head.conv_dims = [CHANNELS, CHANNELS, CHANNELS]  # 2 convs + the deconv's width
    if "refinement" in roi:  # EJROIHeads
        roi.interleave_max_positives = 16  # = 64 x 0.25: every mask head trains on as many RoIs
        roi.refinement.channels = CHANNELS  # the faithful block, on all channels
        roi.refinement.last_relu = False  # the residual branch ends in a linear conv
    return model


# SA-FPN + EJ-Head: 14x14 box RoIs flattened into the first fc (the Enriched Feature)
model = apply_demo_settings(get_config("common/models/mask_rcnn_safpn_ejhead.py").model)

# --- data: configs/common/data/sa_shapes.py at the images' native scale -----------------------
dataloader.train.mapper.augmentations[0].update(
    short_edge_length=(160, 176, 192, 208, 224), max_size=320
)
dataloader.test.mapper.augmentations[0].update(short_edge_length=192, max_size=320)

# --- schedule ---------------------------------------------------------------------------------
optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(
        base_lr="${..lr}", weight_decay_norm=0.0, lr_factor_func=enriched_fc1_lr_factor(14, 7)
    ),
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
    output_dir="output/demo",
    # tools/train_demo.py trains fewer when a timed start shows these won't fit in its time budget
    max_iter=1200,
    eval_period=0,  # evaluate once, after the last iteration
    log_period=20,
    checkpointer=dict(period=100000, max_to_keep=1),  # model_final.pth only
    device="cpu",
    seed=0,
)
