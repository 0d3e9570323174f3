"""Boundary Refinement: the residual block that EJ-Head applies to the pooled RoI features."""

from typing import Optional

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d

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

    ``last_relu`` sets whether the block's last conv is followed by a ReLU: ``None`` keeps each
    mode's own ending (ReLU after the stacked convs, none before the shortcut: the v1 ablation's
    rows); ``False`` ends every mode with a linear conv, so that the Table 5 rows differ only in
    the paper's variable (stacked convs vs shortcut). ``zero_init_last=True`` initialises the
    last conv at zero, so that the residual block starts as the identity (a common choice for
    add-on residual blocks; the paper says nothing about it).

    Efficiency lever (not in the paper; docs/design.md, Costs): ``bottleneck_channels=c`` with
    ``0 < c < channels`` runs the residual branch on ``c`` channels:
    ``x + expand1x1(relu(conv3x3(relu(conv3x3(relu(reduce1x1(x)))))))``.
    ``0`` (default) keeps the faithful block.
    """

    @configurable
    def __init__(
        self,
        channels: int,
        *,
        mode: str = "residual",
        bottleneck_channels: int = 0,
        last_relu: Optional[bool] = None,
        zero_init_last: bool = False,
    ):
        """
        Args:
            channels (int): channels of the RoI features (input and output).
            mode (str): one of ``REFINEMENT_MODES``.
            bottleneck_channels (int): 0 for the faithful block; otherwise the width of the
                residual branch (``mode="residual"`` only), between 1 and ``channels - 1``.
            last_relu (bool or None): ReLU after the last conv; None: the mode's own ending
                (True for ``conv1..3``, False for ``residual``).
            zero_init_last (bool): initialise the last conv's weight and bias at zero.
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
        if last_relu is not None and not isinstance(last_relu, bool):
            raise TypeError(f"last_relu must be None or a bool, got {last_relu!r}")
        self.last_relu = (not self.residual) if last_relu is None else last_relu
        self.zero_init_last = bool(zero_init_last)

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
        if zero_init_last and layers:
            nn.init.zeros_(layers[-1][1].weight)
            nn.init.zeros_(layers[-1][1].bias)

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
            # ReLU after every layer but the last; after the last one as ``last_relu`` says (by
            # default not in the residual branch, whose output is added to the shortcut, as in
            # the paper's Fig. 3)
            if i < len(names) - 1 or self.last_relu:
                # in place: y is a conv's fresh output, which no backward needs (exact, and one
                # R x C x H x W tensor less per layer, in training and at inference)
                y = F.relu(y, inplace=True)
        if not self.residual:
            return y
        if self.last_relu:
            return x + y  # the ReLU's backward needs y: no in-place add on it
        # in place on the last conv's fresh output, which no backward needs: the same sum
        # (addition commutes exactly), without a third R x C x H x W tensor at the block's end
        return y.add_(x)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode}, bottleneck_channels={self.bottleneck_channels}, "
            f"last_relu={self.last_relu}, zero_init_last={self.zero_init_last}"
        )


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
