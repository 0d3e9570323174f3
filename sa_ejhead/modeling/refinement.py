"""Boundary Refinement: the residual block that EJ-Head applies to the pooled RoI features."""

from typing import Optional

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d

__all__ = ["BoundaryRefinement", "REFINEMENT_MODES", "build_refinement"]

# Table 5 of the paper: "none", "Simple Conv x 1/2/3", "Simple Conv x 2 + Shortcut".
REFINEMENT_MODES = ("none", "conv1", "conv2", "conv3", "residual")


class BoundaryRefinement(nn.Module):
    """
    The Boundary Refinement block of EJ-Head (the paper's Fig. 3; the block of "Large Kernel
    Matters"): ``x + conv3x3(relu(conv3x3(x)))``, channels and resolution unchanged, no norm.

    ``mode`` selects the rows of the paper's Table 5:

    * ``"residual"`` (the paper's BR): ``x + conv3x3(relu(conv3x3(x)))``;
    * ``"conv1"`` / ``"conv2"`` / ``"conv3"``: N stacked ``relu(conv3x3(.))``, no shortcut;
    * ``"none"``: identity, no parameters.

    Efficiency lever (not in the paper, DESIGN.md section 7): ``bottleneck_channels=c`` with
    ``0 < c < channels`` runs the residual branch on ``c`` channels:
    ``x + expand1x1(relu(conv3x3(relu(conv3x3(relu(reduce1x1(x)))))))``.
    ``0`` (default) keeps the faithful block.
    """

    @configurable
    def __init__(self, channels: int, *, mode: str = "residual", bottleneck_channels: int = 0):
        """
        Args:
            channels (int): channels of the RoI features (input and output).
            mode (str): one of ``REFINEMENT_MODES``.
            bottleneck_channels (int): 0 for the faithful block; otherwise the width of the
                residual branch (``mode="residual"`` only), between 1 and ``channels - 1``.
        """
        super().__init__()
        if mode not in REFINEMENT_MODES:
            raise ValueError(
                f"Unknown refinement mode '{mode}'; expected one of {REFINEMENT_MODES}"
            )
        if bottleneck_channels and mode != "residual":
            raise ValueError(
                f"bottleneck_channels={bottleneck_channels} needs mode='residual', got '{mode}'"
            )
        if bottleneck_channels < 0 or bottleneck_channels >= channels:
            if bottleneck_channels != 0:
                raise ValueError(
                    f"bottleneck_channels must be 0 or in [1, {channels - 1}], "
                    f"got {bottleneck_channels}"
                )
        self.channels = channels
        self.mode = mode
        self.bottleneck_channels = bottleneck_channels
        self.residual = mode == "residual"

        width = bottleneck_channels or channels
        layers = []
        if bottleneck_channels:
            layers.append(("reduce", Conv2d(channels, width, kernel_size=1)))
        num_convs = 2 if mode == "residual" else (int(mode[-1]) if mode != "none" else 0)
        for k in range(num_convs):
            layers.append((f"conv{k + 1}", Conv2d(width, width, kernel_size=3, padding=1)))
        if bottleneck_channels:
            layers.append(("expand", Conv2d(width, channels, kernel_size=1)))
        for name, layer in layers:
            self.add_module(name, layer)
            weight_init.c2_msra_fill(layer)
        self._layer_names = [name for name, _ in layers]

    @classmethod
    def from_config(cls, cfg, channels):
        return {
            "channels": channels,
            "mode": cfg.MODEL.EJ_HEAD.REFINEMENT,
            "bottleneck_channels": cfg.MODEL.EJ_HEAD.REFINEMENT_CHANNELS,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): R x C x H x W pooled RoI features.

        Returns:
            Tensor: refined features, same shape.
        """
        y = x
        names = self._layer_names
        for i, name in enumerate(names):
            y = getattr(self, name)(y)
            # ReLU after every layer, except the last one of the residual branch (the
            # shortcut is added to a linear output, as in the paper's Fig. 3).
            if not (self.residual and i == len(names) - 1):
                y = F.relu(y)
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"mode={self.mode}, bottleneck_channels={self.bottleneck_channels}"


def build_refinement(cfg, channels: int) -> Optional[BoundaryRefinement]:
    """
    Build the refinement of ``cfg.MODEL.EJ_HEAD``.

    Args:
        cfg (CfgNode): a config with the keys of :func:`sa_ejhead.config.add_sa_ejhead_config`.
        channels (int): channels of the RoI features.

    Returns:
        BoundaryRefinement or None: None when ``MODEL.EJ_HEAD.REFINEMENT == "none"``.
    """
    if cfg.MODEL.EJ_HEAD.REFINEMENT == "none":
        return None
    return BoundaryRefinement(cfg, channels)
