"""Parameters, FLOPs (and optionally CPU latency) of the EJ-Head ROI heads per setting.

FLOPs are counted by fvcore through :class:`detectron2.utils.analysis.FlopCountAnalysis`, as
Detectron2's ``tools/analyze_model.py`` does (one fused multiply-add = one flop; RoIAlign,
element-wise additions and ReLUs are not counted). The heads are measured alone, on fixed RoI
counts: the box path (RoIAlign -> refinement -> box head -> predictor) on ``num_proposals`` RoIs
(Detectron2's 1000 test proposals) and the mask path (RoIAlign -> shared refinement -> mask head)
on ``num_detections`` RoIs (Detectron2's 100 detections per image), as at inference. Interleaving
is training-only and costs nothing at inference.
"""

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from fvcore.nn import parameter_count
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import FastRCNNOutputLayers, MaskRCNNConvUpsampleHead
from detectron2.structures import Boxes
from detectron2.utils.analysis import FlopCountAnalysis

from ..modeling.box_head import EJFastRCNNConvFCHead
from ..modeling.ej_roi_heads import EJROIHeads
from ..modeling.refinement import BoundaryRefinement

__all__ = [
    "HeadVariant",
    "HeadCost",
    "HEAD_VARIANTS",
    "build_heads",
    "head_cost",
    "analyze_heads",
    "format_markdown",
]

IN_FEATURES = ("p2", "p3", "p4", "p5")
STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class HeadVariant:
    """A named EJ-Head setting (the arguments of :class:`EJROIHeads` that change its cost).

    Attributes:
        name (str): a short label for tables.
        box_resolution (int): box pooler output size (7: Detectron2, 14: Enriched Feature).
        box_fc_input (str): ``EJFastRCNNConvFCHead.box_fc_input``.
        refinement (str): ``BoundaryRefinement.mode``.
        refinement_channels (int): ``BoundaryRefinement.bottleneck_channels``.
        refinement_scope (str): "shared" | "box".
        box_refinement_downsample (int): ``EJROIHeads.box_refinement_downsample``.
    """

    name: str
    box_resolution: int = 14
    box_fc_input: str = "flatten"
    refinement: str = "residual"
    refinement_channels: int = 0
    refinement_scope: str = "shared"
    box_refinement_downsample: int = 1


BASELINE = HeadVariant("Detectron2 heads (7x7 box, no EJ)", box_resolution=7, refinement="none")
HEAD_VARIANTS: Tuple[HeadVariant, ...] = (
    BASELINE,
    # Table 4 rows (Enriched Feature / Boundary Refinement alone, faithful)
    HeadVariant("Enriched 14x14, flatten (faithful)", refinement="none"),
    HeadVariant("Enriched 14x14, avgpool", box_fc_input="avgpool", refinement="none"),
    HeadVariant("Enriched 14x14, stride2conv", box_fc_input="stride2conv", refinement="none"),
    HeadVariant("BR residual at 7x7 box / 14x14 mask", box_resolution=7),
    # Table 5 rows (on the 7x7 box head, as the paper's "None" row is the baseline)
    HeadVariant("BR conv1 (7x7 box)", box_resolution=7, refinement="conv1"),
    HeadVariant("BR conv2 (7x7 box)", box_resolution=7, refinement="conv2"),
    HeadVariant("BR conv3 (7x7 box)", box_resolution=7, refinement="conv3"),
    # the full EJ-Head and its cheaper variants
    HeadVariant("EJ-Head faithful (14 flatten + BR shared)"),
    HeadVariant("EJ-Head, BR scope box", refinement_scope="box"),
    HeadVariant("EJ-Head, fc input avgpool", box_fc_input="avgpool"),
    HeadVariant("EJ-Head, fc input stride2conv", box_fc_input="stride2conv"),
    HeadVariant("EJ-Head, BR 64 ch", refinement_channels=64),
    HeadVariant(
        "EJ-Head, fc input avgpool + BR 64 ch", box_fc_input="avgpool", refinement_channels=64
    ),
    HeadVariant("EJ-Head, box BR at 7x7", box_refinement_downsample=2),
    HeadVariant(
        "EJ-Head, box BR at 7x7 + BR 128 ch", box_refinement_downsample=2, refinement_channels=128
    ),
    HeadVariant(
        "EJ-Head, box BR at 7x7 + BR 64 ch", box_refinement_downsample=2, refinement_channels=64
    ),
)


@dataclass
class HeadCost:
    """Cost of one head setting.

    Attributes:
        variant (HeadVariant): the setting.
        params (int): parameters of the ROI heads (the shared refinement counted once).
        refinement_params (int): parameters of the refinement.
        box_flops (float): FLOPs of the box path on ``num_proposals`` RoIs.
        mask_flops (float): FLOPs of the mask path on ``num_detections`` RoIs.
        latency_s (float or None): median CPU seconds of both paths, if measured.
    """

    variant: HeadVariant
    params: int
    refinement_params: int
    box_flops: float
    mask_flops: float
    latency_s: Optional[float] = None

    @property
    def flops(self) -> float:
        return self.box_flops + self.mask_flops


def build_heads(variant: HeadVariant, channels: int = 256, num_classes: int = 80) -> EJROIHeads:
    """
    Build the ROI heads of a setting at Detectron2's Mask R-CNN R50-FPN sizes (fc 1024 x 2,
    4 mask convs of 256, ROIAlignV2 on p2-p5).

    Args:
        variant (HeadVariant): the setting.
        channels (int): FPN channels.
        num_classes (int): foreground classes.

    Returns:
        EJROIHeads: in eval mode.
    """
    res = variant.box_resolution
    head_res = res // variant.box_refinement_downsample
    refinement = None
    if variant.refinement != "none":
        refinement = BoundaryRefinement(
            channels, mode=variant.refinement, bottleneck_channels=variant.refinement_channels
        )
    scales = tuple(1.0 / s for s in STRIDES)
    heads = EJROIHeads(
        num_classes=num_classes,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False),
        box_in_features=list(IN_FEATURES),
        box_pooler=ROIPooler(res, scales, 0, "ROIAlignV2"),
        box_head=EJFastRCNNConvFCHead(
            ShapeSpec(channels=channels, height=head_res, width=head_res),
            conv_dims=[],
            fc_dims=[1024, 1024],
            box_fc_input=variant.box_fc_input,
        ),
        box_predictor=FastRCNNOutputLayers(
            ShapeSpec(channels=1024),
            box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
            num_classes=num_classes,
        ),
        mask_in_features=list(IN_FEATURES),
        mask_pooler=ROIPooler(14, scales, 0, "ROIAlignV2"),
        mask_head=MaskRCNNConvUpsampleHead(
            ShapeSpec(channels=channels, height=14, width=14),
            num_classes=num_classes,
            conv_dims=[channels] * 5,
        ),
        refinement=refinement,
        refinement_scope=variant.refinement_scope,
        box_refinement_downsample=variant.box_refinement_downsample,
    )
    return heads.eval()


class _BoxPath(nn.Module):
    def __init__(self, heads: EJROIHeads):
        super().__init__()
        self.heads = heads

    def forward(self, features: List[torch.Tensor], rois: torch.Tensor):
        x = self.heads.box_pooler(features, [Boxes(rois)])  # R x C x S x S
        x = self.heads._refine_box_features(x)
        return self.heads.box_predictor(self.heads.box_head(x))


class _MaskPath(nn.Module):
    def __init__(self, heads: EJROIHeads):
        super().__init__()
        self.heads = heads

    def forward(self, features: List[torch.Tensor], rois: torch.Tensor):
        x = self.heads.mask_pooler(features, [Boxes(rois)])  # R x C x 14 x 14
        x = self.heads._refine_mask_features(x)
        return self.heads.mask_head.layers(x)  # R x K x 28 x 28 logits


def _random_rois(num: int, height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = torch.exp(torch.empty(num, 2).uniform_(2.5, 6.5, generator=g))  # ~12 .. 665 px
    ctr = torch.rand(num, 2, generator=g) * torch.tensor([width, height])
    boxes = torch.cat([ctr - size / 2, ctr + size / 2], dim=1)
    return boxes.clamp(min=0).min(torch.tensor([width, height, width, height]) - 1.0)


def _features(channels: int, height: int, width: int) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, channels, -(-height // s), -(-width // s), generator=g) for s in STRIDES]


def head_cost(
    variant: HeadVariant,
    *,
    channels: int = 256,
    num_classes: int = 80,
    height: int = 800,
    width: int = 1216,
    num_proposals: int = 1000,
    num_detections: int = 100,
    latency_runs: int = 0,
) -> HeadCost:
    """
    Measure one setting.

    Args:
        variant (HeadVariant): the setting.
        channels, num_classes: see :func:`build_heads`.
        height, width (int): image size (sets the feature maps the RoIs are pooled from).
        num_proposals (int): RoIs of the box path.
        num_detections (int): RoIs of the mask path.
        latency_runs (int): if > 0, time both paths this many times (after one warm-up run)
            and report the median.

    Returns:
        HeadCost
    """
    torch.manual_seed(0)
    heads = build_heads(variant, channels, num_classes)
    features = _features(channels, height, width)
    box_rois = _random_rois(num_proposals, height, width, seed=1)
    mask_rois = _random_rois(num_detections, height, width, seed=2)
    box_path, mask_path = _BoxPath(heads), _MaskPath(heads)
    with torch.no_grad():
        box_flops = _flops(box_path, (features, box_rois))
        mask_flops = _flops(mask_path, (features, mask_rois))
        latency = None
        if latency_runs > 0:
            times = []
            for i in range(latency_runs + 1):
                start = time.perf_counter()
                box_path(features, box_rois)
                mask_path(features, mask_rois)
                if i > 0:
                    times.append(time.perf_counter() - start)
            latency = sorted(times)[len(times) // 2]
    refinement_params = parameter_count(heads.refinement)[""] if heads.refinement else 0
    return HeadCost(
        variant=variant,
        params=parameter_count(heads)[""],
        refinement_params=refinement_params,
        box_flops=box_flops,
        mask_flops=mask_flops,
        latency_s=latency,
    )


def _flops(module: nn.Module, inputs) -> float:
    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return float(analysis.total())


def analyze_heads(variants: Sequence[HeadVariant] = HEAD_VARIANTS, **kwargs) -> List[HeadCost]:
    """
    Measure several settings.

    Args:
        variants (list[HeadVariant]): the settings.
        kwargs: the keyword arguments of :func:`head_cost`.

    Returns:
        list[HeadCost]
    """
    return [head_cost(v, **kwargs) for v in variants]


def format_markdown(costs: Sequence[HeadCost], baseline: Optional[HeadCost] = None) -> str:
    """
    Format costs as a Markdown table (GFLOPs = 1e9 multiply-adds), with ratios to ``baseline``
    (default: the row of :data:`BASELINE`, if measured).

    Args:
        costs (list[HeadCost]): the measured settings.
        baseline (HeadCost or None): the reference row.

    Returns:
        str
    """
    if baseline is None:
        baseline = next((c for c in costs if c.variant == BASELINE), None)
    with_latency = any(c.latency_s is not None for c in costs)
    header = "| setting | box res | fc input | BR | BR ch | scope | box BR down | params (M) "
    header += "| BR params (M) | box GFLOPs | mask GFLOPs | total GFLOPs | vs D2 heads |"
    if with_latency:
        header += " CPU latency (s) |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for c in costs:
        v = c.variant
        ratio = f"{c.flops / baseline.flops:.2f}x" if baseline else "-"
        row = (
            f"| {v.name} | {v.box_resolution} | {v.box_fc_input} | {v.refinement} | "
            f"{v.refinement_channels or '-'} | {v.refinement_scope if v.refinement != 'none' else '-'}"
            f" | {v.box_refinement_downsample} | {c.params / 1e6:.1f} | "
            f"{c.refinement_params / 1e6:.2f} | {c.box_flops / 1e9:.1f} | {c.mask_flops / 1e9:.1f} "
            f"| {c.flops / 1e9:.1f} | {ratio} |"
        )
        if with_latency:
            row += f" {c.latency_s:.2f} |" if c.latency_s is not None else " - |"
        lines.append(row)
    return "\n".join(lines)
