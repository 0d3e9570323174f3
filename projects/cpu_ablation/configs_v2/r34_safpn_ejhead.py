# v2 Table 2 "Mask R-CNN + SA-FPN + EJ-Head (Ours), ResNet101-FPN" analogue: Ours on the ResNet-34
# layout at the same widths, initialised from its own pre-trained weights.
from ._settings import small_resnet
from .safpn_ejhead import dataloader, lr_multiplier, model, optimizer, train

small_resnet(model.backbone.bottom_up, "FrozenBN", blocks=(3, 4, 6, 3))
train.init_checkpoint = "sa_ejhead://pretrained/sa_shapes_R34half_pretrain.pth.xz"
