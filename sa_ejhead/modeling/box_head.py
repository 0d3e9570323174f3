"""The EJ-Head box head: Detectron2's conv/fc box head with a choice of input to the first fc."""

from typing import List

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY

__all__ = ["EJFastRCNNConvFCHead", "BOX_FC_INPUTS"]

# "flatten": the faithful Enriched Feature (C*14*14 into the first fc);
# "avgpool": 2x2 average pooling first (14x14 -> 7x7), the fc of the 7x7 head;
# "stride2conv": a 3x3 stride-2 conv + ReLU first (14x14 -> 7x7).
BOX_FC_INPUTS = ("flatten", "avgpool", "stride2conv")


# Like FastRCNNConvFCHead this is an nn.Sequential whose children run in the order they were added
# (torchscript/tracing friendly), so the optional input reduction is the first child.
@ROI_BOX_HEAD_REGISTRY.register()
class EJFastRCNNConvFCHead(nn.Sequential):
    """
    A box head of [input reduction] + 3x3 convs (norm, ReLU) + fcs (ReLU), for the 14x14 RoI
    features of EJ-Head's "Enriched Feature".

    With ``box_fc_input="flatten"`` it is exactly Detectron2's ``FastRCNNConvFCHead`` (same child
    names, same init). The other inputs shrink the feature before the convs/fcs:
    ``"avgpool"`` (2x2 average pooling, no parameters) and ``"stride2conv"`` (3x3 stride-2 conv +
    ReLU, named ``fc_input``).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_dims: List[int],
        fc_dims: List[int],
        conv_norm="",
        box_fc_input: str = "flatten",
    ):
        """
        Args:
            input_shape (ShapeSpec): shape of the pooled RoI feature (e.g. 256 x 14 x 14).
            conv_dims (list[int]): output channels of the 3x3 conv layers.
            fc_dims (list[int]): output dimensions of the fc layers.
            conv_norm (str or callable): normalization of the conv layers, see
                :func:`detectron2.layers.get_norm`.
            box_fc_input (str): one of ``BOX_FC_INPUTS``.
        """
        super().__init__()
        if box_fc_input not in BOX_FC_INPUTS:
            raise ValueError(
                f"Unknown box_fc_input '{box_fc_input}'; expected one of {BOX_FC_INPUTS}"
            )
        if len(conv_dims) + len(fc_dims) == 0:
            raise ValueError("EJFastRCNNConvFCHead needs at least one conv or fc layer")
        self.box_fc_input = box_fc_input
        channels, height, width = input_shape.channels, input_shape.height, input_shape.width

        if box_fc_input == "avgpool":
            self.add_module("fc_input_pool", nn.AvgPool2d(kernel_size=2, stride=2))
            height, width = height // 2, width // 2
        elif box_fc_input == "stride2conv":
            reduce = Conv2d(
                channels, channels, kernel_size=3, stride=2, padding=1, activation=nn.ReLU()
            )
            weight_init.c2_msra_fill(reduce)
            self.add_module("fc_input", reduce)
            height, width = (height + 1) // 2, (width + 1) // 2

        self.conv_norm_relus = []
        for k, conv_dim in enumerate(conv_dims):
            conv = Conv2d(
                channels,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=not conv_norm,
                norm=get_norm(conv_norm, conv_dim),
                activation=nn.ReLU(),
            )
            self.add_module(f"conv{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            channels = conv_dim
        self._output_size = (channels, height, width)

        self.fcs = []
        for k, fc_dim in enumerate(fc_dims):
            if k == 0:
                self.add_module("flatten", nn.Flatten())
            fc = nn.Linear(int(np.prod(self._output_size)), fc_dim)
            self.add_module(f"fc{k + 1}", fc)
            self.add_module(f"fc_relu{k + 1}", nn.ReLU())
            self.fcs.append(fc)
            self._output_size = fc_dim

        for layer in self.conv_norm_relus:
            weight_init.c2_msra_fill(layer)
        for layer in self.fcs:
            weight_init.c2_xavier_fill(layer)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "input_shape": input_shape,
            "conv_dims": [cfg.MODEL.ROI_BOX_HEAD.CONV_DIM] * cfg.MODEL.ROI_BOX_HEAD.NUM_CONV,
            "fc_dims": [cfg.MODEL.ROI_BOX_HEAD.FC_DIM] * cfg.MODEL.ROI_BOX_HEAD.NUM_FC,
            "conv_norm": cfg.MODEL.ROI_BOX_HEAD.NORM,
            "box_fc_input": cfg.MODEL.EJ_HEAD.BOX_FC_INPUT,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): R x C x H x W pooled RoI features.

        Returns:
            Tensor: R x fc_dims[-1] (or R x C' x H' x W' without fcs).
        """
        for layer in self:
            x = layer(x)
        return x

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A layer is loaded whole or not at all. Detectron2's checkpointer skips tensors one by one
        # when their shapes differ: from a 7x7 checkpoint it would drop fc1's (256*7*7)-input
        # weight but load its bias into our 14x14 fc1. Drop such an orphaned bias, so the layer is
        # reported as new (missing) and keeps its own init.
        for name, child in self.named_children():
            weight, bias = f"{prefix}{name}.weight", f"{prefix}{name}.bias"
            if getattr(child, "bias", None) is not None and bias in state_dict:
                if weight not in state_dict:
                    state_dict.pop(bias)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    @torch.jit.unused
    def output_shape(self) -> ShapeSpec:
        """
        Returns:
            ShapeSpec: the output feature shape.
        """
        o = self._output_size
        if isinstance(o, int):
            return ShapeSpec(channels=o)
        return ShapeSpec(channels=o[0], height=o[1], width=o[2])
