"""The EJ-Head box head: Detectron2's conv/fc box head with a choice of input to the first fc."""

from typing import List

import fvcore.nn.weight_init as weight_init
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead

__all__ = ["EJFastRCNNConvFCHead", "BOX_FC_INPUTS"]

# "flatten": the faithful Enriched Feature (C*14*14 into the first fc);
# "avgpool": 2x2 average pooling first (14x14 -> 7x7), the fc of the 7x7 head;
# "stride2conv": a 3x3 stride-2 conv + ReLU first (14x14 -> 7x7).
BOX_FC_INPUTS = ("flatten", "avgpool", "stride2conv")


@ROI_BOX_HEAD_REGISTRY.register()
class EJFastRCNNConvFCHead(FastRCNNConvFCHead):
    """
    Detectron2's ``FastRCNNConvFCHead`` (3x3 convs + fcs) with a choice of input reduction, for
    the 14x14 RoI features of EJ-Head's "Enriched Feature".

    With ``box_fc_input="flatten"`` it is exactly ``FastRCNNConvFCHead`` (same child names, same
    init, so checkpoints load both ways). The other inputs shrink the feature before the
    convs/fcs: ``"avgpool"`` (2x2 average pooling, no parameters, child ``fc_input_pool``) and
    ``"stride2conv"`` (3x3 stride-2 conv + ReLU, child ``fc_input``). The reduction is the first
    child of the ``nn.Sequential``, so Detectron2's ``forward`` runs it first.
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
            conv_dims, fc_dims, conv_norm: as :class:`FastRCNNConvFCHead`.
            box_fc_input (str): one of ``BOX_FC_INPUTS``.
        """
        if box_fc_input not in BOX_FC_INPUTS:
            raise ValueError(
                f"Unknown box_fc_input '{box_fc_input}'; expected one of {BOX_FC_INPUTS}"
            )
        if len(conv_dims) + len(fc_dims) == 0:
            raise ValueError("EJFastRCNNConvFCHead needs at least one conv or fc layer")
        channels, height, width = input_shape.channels, input_shape.height, input_shape.width
        reduction = None
        if box_fc_input == "avgpool":
            reduction = ("fc_input_pool", nn.AvgPool2d(kernel_size=2, stride=2))
            height, width = height // 2, width // 2
        elif box_fc_input == "stride2conv":
            conv = Conv2d(
                channels, channels, kernel_size=3, stride=2, padding=1, activation=nn.ReLU()
            )
            weight_init.c2_msra_fill(conv)  # before the layers below, as their random init
            reduction = ("fc_input", conv)
            height, width = (height + 1) // 2, (width + 1) // 2
        super().__init__(
            ShapeSpec(channels=channels, height=height, width=width),
            conv_dims=conv_dims,
            fc_dims=fc_dims,
            conv_norm=conv_norm,
        )
        self.box_fc_input = box_fc_input
        if reduction is not None:  # first child: nn.Sequential runs its children in order
            layers = list(self._modules.items())
            self._modules.clear()
            for name, module in [reduction] + layers:
                self.add_module(name, module)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["box_fc_input"] = cfg.MODEL.EJ_HEAD.BOX_FC_INPUT
        return ret

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
