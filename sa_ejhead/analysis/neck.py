"""Parameters and FLOPs of the SA-FPN neck, per mode and per efficiency lever.

FLOPs are counted by fvcore through :class:`detectron2.utils.analysis.FlopCountAnalysis`, exactly
as Detectron2's ``tools/analyze_model.py`` does (one fused multiply-add = one flop; element-wise
additions and max pools are ignored, nearest upsampling counts one flop per output element).
The neck is measured alone: it is fed the bottom-up's features (computed once), so its figures
exclude the bottom-up, whose cost is reported separately.
"""

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fvcore.nn import parameter_count

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicStem, ResNet
from detectron2.utils.analysis import FlopCountAnalysis

from ..modeling.safpn import SAFPN

__all__ = [
    "NeckVariant",
    "NeckCost",
    "NECK_VARIANTS",
    "build_resnet_bottom_up",
    "bottom_up_cost",
    "neck_cost",
    "analyze_necks",
    "format_markdown",
]

IN_FEATURES = ("res2", "res3", "res4", "res5")


@dataclass(frozen=True)
class NeckVariant:
    """A named set of :class:`~sa_ejhead.modeling.SAFPN` keyword arguments.

    Attributes:
        name (str): a short label for tables.
        kwargs (dict): ``SAFPN`` keyword arguments besides bottom_up / in_features /
            out_channels / top_block.
    """

    name: str
    kwargs: Dict


def _v(name, **kwargs):
    return NeckVariant(name, kwargs)


_CHEAP = dict(share_laterals=True, fuse_position="before")
NECK_VARIANTS: Tuple[NeckVariant, ...] = (
    # the modes (DESIGN.md section 2), faithful
    _v("td (Detectron2 FPN)", mode="td"),
    _v("bu", mode="bu"),
    _v("buf", mode="buf"),
    _v("td+buf", mode="td+buf"),
    _v("sa (paper, default)", mode="sa"),
    _v("pa (PANet)", mode="pa"),
    # the levers, one at a time, on sa
    _v("sa, maxpool", mode="sa", downsample="maxpool"),
    _v("sa, share_laterals", mode="sa", share_laterals=True),
    _v("sa, fuse before", mode="sa", fuse_position="before"),
    _v("sa, td_only p2", mode="sa", td_only_levels=["p2"]),
    # combinations
    _v("sa, share + before", mode="sa", **_CHEAP),
    _v("sa, share + before + td_only p2", mode="sa", td_only_levels=["p2"], **_CHEAP),
    _v("sa, share + before + maxpool", mode="sa", downsample="maxpool", **_CHEAP),
    _v(
        "sa, share + before + maxpool + td_only p2",
        mode="sa",
        downsample="maxpool",
        td_only_levels=["p2"],
        **_CHEAP,
    ),
    _v("td+buf, share + before", mode="td+buf", **_CHEAP),
    _v("td+buf, share + before + maxpool", mode="td+buf", downsample="maxpool", **_CHEAP),
)


@dataclass
class NeckCost:
    """The cost of one neck variant (bottom-up excluded).

    Attributes:
        name (str): the variant's label.
        kwargs (dict): its ``SAFPN`` arguments.
        params (int): parameters of the neck.
        flops (float): fvcore flops (multiply-adds) of the neck.
        flops_per_level (dict[str, float]): flops of the modules of each pyramid level
            (``p2``..``p5``; a downsample into level i counts at level i).
    """

    name: str
    kwargs: Dict
    params: int
    flops: float
    flops_per_level: Dict[str, float]


class _Features(Backbone):
    """A stand-in bottom-up that passes precomputed features through (zero cost)."""

    def __init__(self, shapes: Dict[str, ShapeSpec]):
        super().__init__()
        self._shapes = dict(shapes)
        self._out_features = list(shapes)

    def forward(self, x):
        return x

    def output_shape(self):
        return dict(self._shapes)


def build_resnet_bottom_up(depth: int = 50) -> ResNet:
    """Detectron2's Mask R-CNN bottom-up (``common/models/mask_rcnn_fpn.py``): ResNet, FrozenBN.

    Args:
        depth (int): 18, 34, 50, 101 or 152.

    Returns:
        ResNet: outputs res2..res5, random weights (costs don't depend on them).
    """
    kwargs = dict(depth=depth, norm="FrozenBN")
    if depth >= 50:
        kwargs["stride_in_1x1"] = True
    return ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=ResNet.make_default_stages(**kwargs),
        out_features=list(IN_FEATURES),
    ).eval()


def bottom_up_cost(bottom_up: Backbone, height: int, width: int):
    """Parameters, flops and output features of a bottom-up on one ``height x width`` image.

    Args:
        bottom_up (Backbone): e.g. :func:`build_resnet_bottom_up`'s.
        height (int): image height.
        width (int): image width.

    Returns:
        tuple[int, float, dict[str, Tensor]]: parameters, flops, and the features.
    """
    image = torch.zeros(1, 3, height, width)
    with torch.no_grad():
        flops = FlopCountAnalysis(bottom_up, (image,))
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = flops.total()
        feats = bottom_up(image)
    return parameter_count(bottom_up)[""], float(total), feats


def neck_cost(
    variant: NeckVariant,
    features: Dict[str, torch.Tensor],
    shapes: Dict[str, ShapeSpec],
    out_channels: int = 256,
) -> NeckCost:
    """Count one neck variant's parameters and flops on given bottom-up features.

    Args:
        variant (NeckVariant): the neck's arguments.
        features (dict[str, Tensor]): the bottom-up's outputs (``res2``..``res5``).
        shapes (dict[str, ShapeSpec]): the bottom-up's ``output_shape()``.
        out_channels (int): the neck's channels.

    Returns:
        NeckCost: the neck's cost (p6's ``LastLevelMaxPool`` included; it is free).
    """
    neck = SAFPN(
        _Features(shapes),
        list(IN_FEATURES),
        out_channels,
        top_block=LastLevelMaxPool(),
        **copy.deepcopy(variant.kwargs),
    ).eval()
    with torch.no_grad():
        flops = FlopCountAnalysis(neck, (features,))
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = float(flops.total())
        by_module = flops.by_module()
    per_level: Dict[str, float] = {}
    for name, count in by_module.items():
        # FlopCountAnalysis wraps the neck in a TracingAdapter: its modules are "model.<name>"
        name = name[len("model.") :] if name.startswith("model.") else ""
        if name and "." not in name and name[-1].isdigit():
            level = "p" + name[-1]
            per_level[level] = per_level.get(level, 0.0) + float(count)
    return NeckCost(variant.name, dict(variant.kwargs), parameter_count(neck)[""], total, per_level)


def analyze_necks(
    variants: Sequence[NeckVariant] = NECK_VARIANTS,
    *,
    height: int = 800,
    width: int = 1216,
    depth: int = 50,
    out_channels: int = 256,
) -> Tuple[Tuple[int, float], List[NeckCost]]:
    """Cost of the bottom-up and of each neck variant at one input size.

    Args:
        variants (list[NeckVariant]): the necks to measure.
        height (int): image height (800 x 1216 is Detectron2's usual analysis size).
        width (int): image width.
        depth (int): ResNet depth of the bottom-up.
        out_channels (int): the neck's channels.

    Returns:
        tuple: ``(bottom_up_params, bottom_up_flops)`` and a list of :class:`NeckCost`.
    """
    bottom_up = build_resnet_bottom_up(depth)
    bu_params, bu_flops, feats = bottom_up_cost(bottom_up, height, width)
    shapes = bottom_up.output_shape()
    costs = [neck_cost(v, feats, shapes, out_channels) for v in variants]
    return (bu_params, bu_flops), costs


def _args(kwargs: Dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def format_markdown(
    bottom_up: Tuple[int, float], costs: Sequence[NeckCost], reference: Optional[str] = None
) -> str:
    """A Markdown table of neck costs, relative to the first (or the ``reference``) variant.

    Args:
        bottom_up (tuple[int, float]): the bottom-up's parameters and flops.
        costs (list[NeckCost]): from :func:`analyze_necks`.
        reference (str or None): the name of the variant the ratios refer to.

    Returns:
        str: the table, with a line for the bottom-up.
    """
    ref = next((c for c in costs if c.name == reference), costs[0])
    lines = [
        "| neck | SAFPN arguments | params (M) | GFLOPs | x "
        + ref.name.split(" ")[0]
        + " | GFLOPs at p2 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for c in costs:
        lines.append(
            f"| {c.name} | `{_args(c.kwargs)}` | {c.params / 1e6:.2f} | {c.flops / 1e9:.1f} | "
            f"{c.flops / ref.flops:.2f} | {c.flops_per_level.get('p2', 0.0) / 1e9:.1f} |"
        )
    lines.append(
        f"| bottom-up (not in the rows above) | | {bottom_up[0] / 1e6:.2f} | "
        f"{bottom_up[1] / 1e9:.1f} | | |"
    )
    return "\n".join(lines)
