# What the SA-Shapes configs that train on a CPU share:
# - helpers, also of the from-scratch demo (configs/demo/sa_shapes_scratch.py): the small ResNet,
#   the shrunk Mask R-CNN, the cosine schedule and the CPU train settings;
# - the recipe of `make demo` (configs/demo/sa_shapes.py, whose header gives its values beside the
#   paper's) and of the CPU ablation's protocol v2 (projects/cpu_ablation/configs_v2/_settings.py):
#   apply_demo_settings for a model, and dataloader, optimizer, lr_multiplier and train.
import torch
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.resnet import BasicBlock
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import CosineParamScheduler

from .data.sa_shapes import dataloader

WIDTH = 32  # ResNet stem width; stages 32, 64, 128, 256
CHANNELS = 64  # FPN / RPN / RoI feature width
FC_DIM = 256  # box head fcs
PRETRAINED = "sa_ejhead://pretrained/sa_shapes_R18half_pretrain.pth"


def small_resnet(bottom_up, norm, blocks=(2, 2, 2, 2)):
    """Make ``bottom_up`` (a ResNet config) ResNet-18 at half width, or ``blocks`` BasicBlocks per
    stage (ResNet-34: 3, 4, 6, 3), with ``norm`` ("BN", "FrozenBN") in the stem and every block.
    """
    bottom_up.stem.update(out_channels=WIDTH, norm=norm)
    bottom_up.stages = [
        L(ResNet.make_stage)(
            block_class=BasicBlock,
            num_blocks=n,
            stride_per_block=[stride] + [1] * (n - 1),
            in_channels=WIDTH * max(1, 2 ** (i - 1)),
            out_channels=WIDTH * 2**i,
            norm=norm,
        )
        for i, (n, stride) in enumerate(zip(blocks, [1, 2, 2, 2]))
    ]


def small_mask_rcnn(model, norm):
    """Shrink ``model``, a Mask R-CNN config (Detectron2's StandardROIHeads or EJROIHeads), for
    SA-Shapes (5 classes) on a CPU: ``small_resnet`` with ``norm``, images normalised by
    ImageNet's mean and std (BGR), FPN / RPN / RoI features ``CHANNELS`` wide, anchors 8..128 px,
    1000/500 RPN proposals before NMS and 500/200 after (training/test), box fcs ``FC_DIM`` wide
    (on RoIs of the box pooler's size) and 2 mask convs. Returns ``model``."""
    small_resnet(model.backbone.bottom_up, norm)
    model.backbone.out_channels = CHANNELS
    model.pixel_mean = [103.53, 116.28, 123.675]
    model.pixel_std = [57.375, 57.12, 58.395]

    rpn = model.proposal_generator
    rpn.head.in_channels = CHANNELS
    rpn.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
    rpn.pre_nms_topk = (1000, 500)
    rpn.post_nms_topk = (500, 200)

    roi = model.roi_heads
    roi.num_classes = 5
    side = roi.box_pooler.output_size  # 14: EJ-Head's Enriched Feature, 7: Mask R-CNN
    roi.box_head.input_shape = ShapeSpec(channels=CHANNELS, height=side, width=side)
    roi.box_head.fc_dims = [FC_DIM, FC_DIM]
    roi.box_predictor.input_shape = ShapeSpec(channels=FC_DIM)
    roi.mask_head.input_shape = ShapeSpec(channels=CHANNELS, height=14, width=14)
    roi.mask_head.conv_dims = [CHANNELS, CHANNELS, CHANNELS]  # 2 convs + the deconv's width
    return model


def cosine_schedule(end_value):
    """The lr multiplier: a linear warm-up from 0.01 over the first 10% of train.max_iter, then a
    cosine decay from 1 to ``end_value``."""
    return L(WarmupParamScheduler)(
        scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=end_value),
        warmup_length=0.1,
        warmup_factor=0.01,
    )


def cpu_train(**kwargs):
    """Detectron2's ``train`` settings on the CPU, seed 0, logging every 20 iterations, evaluating
    once after the last one and keeping model_final.pth only; then ``kwargs``."""
    train = get_config("common/train.py").train
    train.update(
        eval_period=0,
        log_period=20,
        checkpointer=dict(period=100000, max_to_keep=1),
        device="cpu",
        seed=0,
    )
    train.update(**kwargs)
    return train


# --- the demo's recipe ----------------------------------------------------------------------------
def apply_demo_settings(model):
    """The demo's backbone, RPN and RoI settings on a Mask R-CNN model config (Detectron2's
    StandardROIHeads or sa_ejhead's EJROIHeads). Returns ``model``."""
    # ResNet-18 at half width, FrozenBN, stem and res2 frozen, pre-trained (train.init_checkpoint)
    small_mask_rcnn(model, norm="FrozenBN")
    model.backbone.bottom_up.freeze_at = 2

    roi = model.roi_heads
    roi.batch_size_per_image = 64
    roi.positive_fraction = 0.25
    roi.box_pooler.canonical_box_size = 224
    roi.mask_pooler.canonical_box_size = 224
    if "refinement" in roi:  # EJROIHeads
        roi.interleave_max_positives = 16  # = 64 x 0.25: every mask head trains on as many RoIs
        roi.refinement.channels = CHANNELS  # the faithful block, on all channels
        roi.refinement.last_relu = False  # the residual branch ends in a linear conv
        roi.threaded_pooling = True  # speed only: RoIAlign on every CPU thread
    return model


# configs/common/data/sa_shapes.py at the images' native scale
dataloader.train.mapper.augmentations[0].update(
    short_edge_length=(160, 176, 192, 208, 224), max_size=320
)
dataloader.test.mapper.augmentations[0].update(short_edge_length=192, max_size=320)

# SGD; a model with the Enriched Feature adds params.lr_factor_func (sa_ejhead.modeling.box_head)
optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(base_lr="${..lr}", weight_decay_norm=0.0),
    lr=0.01,
    momentum=0.9,
    weight_decay=1e-4,
)
lr_multiplier = cosine_schedule(end_value=0.01)
# make demo trains all of them (tools/train_demo.py --iters N shortens it on purpose)
train = cpu_train(init_checkpoint=PRETRAINED, output_dir="output/demo", max_iter=1200)
