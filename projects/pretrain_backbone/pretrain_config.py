# Pre-training of the demo backbone (the stand-in for the paper's ImageNet initialisation): the
# make-demo baseline detector (Mask R-CNN, ResNet-18 at half width with BN, plain FPN, 7x7 box
# head) trained on the separate sa_shapes_pretrain set (2000 images, its own seed; never
# sa_shapes_train/val), of which only the bottom-up ResNet is kept (pretrain.py --export).
# Geometry of protocol v2: images at their native scale (shorter side 192, jittered in
# training) and RoIs assigned to levels at COCO's canonical box size 224, so that a RoI spans
# about as many feature cells as on COCO (docs/ablation.md, diagnostic (c)).
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from sa_ejhead.model_zoo import get_config

_base = get_config("demo/sa_shapes_scratch_baseline.py")
model, dataloader, train = _base.model, _base.dataloader, _base.train
optimizer, lr_multiplier = _base.optimizer, _base.lr_multiplier

model.roi_heads.box_pooler.canonical_box_size = 224
model.roi_heads.mask_pooler.canonical_box_size = 224

dataloader.train.dataset.names = "sa_shapes_pretrain_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(
        short_edge_length=(160, 176, 192, 208, 224), max_size=320, sample_style="choice"
    ),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.dataset.names = "sa_shapes_pretrain_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=192, max_size=320)
]

# AdamW lr 1e-3 with warm-up and cosine decay (the demo's), over 5000 iterations at batch 4
# (10 epochs of the 2000 images; about 50 minutes on one core of the 2-core CPU)
train.max_iter = 5000
train.output_dir = "output/pretrain_backbone"
train.checkpointer = dict(period=250, max_to_keep=2)
train.eval_period = 0
train.log_period = 50
train.seed = 0
