"""SA-FPN: the Scale Aware Feature Pyramid Network of Ni & Yao (docs/design.md, SA-FPN).

A drop-in replacement for Detectron2's :class:`~detectron2.modeling.backbone.FPN`: same inputs,
same ``p2..p6`` outputs, same ``size_divisibility`` / ``padding_constraints``, and in ``td`` mode
the same module names, so Detectron2 FPN checkpoints load into it by name.
"""

import math
from typing import Dict, Iterator, List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

SAFPN_MODES = ("td", "bu", "buf", "td+buf", "sa")
_FUSE_POSITIONS = ("after", "before")


def _resize_nearest(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resize of ``x`` to the spatial size of ``ref``.

    For a pyramid whose levels halve with rounding up (ResNet: 2h or 2h - 1 -> h) this is the same
    as a 2x nearest upsample followed by a crop to ``ref``'s size; for even sizes it is exactly
    Detectron2's ``F.interpolate(scale_factor=2.0, mode="nearest")``.

    Args:
        x (Tensor): N x C x h x w.
        ref (Tensor): N x C' x H x W.

    Returns:
        Tensor: N x C x H x W.
    """
    return F.interpolate(x, size=ref.shape[-2:], mode="nearest")


def _match_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Crop or zero-pad ``x`` at the bottom/right so that its spatial size equals ``ref``'s.

    A stride-2 downsample of an odd-size map gives ``ceil(h / 2)``, which is what ResNet's own
    stride-2 layers give, so with ResNet bottom-ups this is a no-op; other bottom-ups may round
    down, and then the extra bottom row / right column is cropped (or a missing one zero-padded).
    The top-left corner stays aligned, as in the convolutions themselves.

    Args:
        x (Tensor): N x C x h x w.
        ref (Tensor): N x C' x H x W.

    Returns:
        Tensor: N x C x H x W.
    """
    h, w = ref.shape[-2:]
    x = x[..., :h, :w]
    pad_h, pad_w = h - x.shape[-2], w - x.shape[-1]
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


class SAFPN(Backbone):
    """Scale Aware FPN: a top-down FPN and a bottom-up-fusion FPN, concatenated per level.

    Notation (levels i from the finest to the coarsest input feature, e.g. 2..5): C_i the
    bottom-up features; L_i = 1x1 lateral conv; Up = nearest resize to the finer level's exact
    size; Down = 3x3 stride-2 conv (PANet's choice), whose output is cropped / zero-padded at the
    bottom-right to the next level's size; O = 3x3 output conv;
    "+" is the element-wise merge chosen by ``fuse_type`` (``"avg"`` divides the sum by the
    number of summed terms, as Detectron2's FPN does for its two). No activations.

    Pathways (each has its own convolutions):

    * TD (Detectron2's FPN, modules ``fpn_lateral{i}`` / ``fpn_output{i}``):
      T_top = L_top(C_top); T_i = L_i(C_i) + Up(T_{i+1}); TD_i = O(T_i).
    * BU (modules ``buf_lateral{i}``, ``buf_down{i}`` (into level i), ``buf_output{i}``):
      B_2 = L_2; B_i = L_i + Down(B_{i-1}); BU_i = O(B_i).
    * BUF: B_2 = L_2 + Up(L_3); B_i = L_i + Down(B_{i-1}) + Up(L_{i+1});
      B_top = L_top + Down(B_{top-1}); BUF_i = O(B_i). Up takes the next level's *lateral*.

    Modes (outputs per level before ``top_block``):

    * ``td``: TD_i (Detectron2's FPN, identical parameters and outputs);
    * ``bu`` / ``buf``: BU_i / BUF_i;
    * ``td+buf``: TD_i + BUF_i;
    * ``sa`` (default, the paper's SA-FPN): ``sa_fuse{i}``(concat(TD_i, BUF_i)), a 1x1 conv
      2C -> C.

    Efficiency levers (defaults are the faithful model; they apply to ``td+buf`` and ``sa``):

    * ``share_laterals=True``: the BUF pathway reuses the TD laterals (no ``buf_lateral{i}``).
    * ``fuse_position="before"``: merge the pre-output sums, then one output conv per level:
      ``sa``: out_i = O(sa_fuse(concat(T_i, B_i))); ``td+buf``: out_i = O(T_i + B_i); the
      output convs are ``fpn_output{i}`` and there are no ``buf_output{i}``.
    * ``td_only_levels``: the finest levels (a prefix, e.g. ``["p2"]``) output the TD pathway
      alone, so they have no ``buf_output`` / ``sa_fuse``; the BUF pathway is still computed
      there (B_2 feeds B_3), without its output conv.

    Every module that exists takes part in the outputs, so every parameter gets a gradient.
    """

    @configurable
    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        *,
        mode: str = "sa",
        norm: str = "",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
        share_laterals: bool = False,
        fuse_position: str = "after",
        td_only_levels: Sequence[str] = (),
    ):
        """
        Args:
            bottom_up (Backbone): the bottom-up network (e.g. ResNet); its features named in
                ``in_features`` feed the neck.
            in_features (list[str]): names of contiguous bottom-up features with log2-contiguous
                strides, from high to low resolution, e.g. ``["res2", "res3", "res4", "res5"]``.
            out_channels (int): channels of every output map (256 in the paper).
            mode (str): one of ``"td"``, ``"bu"``, ``"buf"``, ``"td+buf"``, ``"sa"``.
            norm (str): normalization of every conv, as in Detectron2's FPN ("" for none,
                "GN", "SyncBN", ...); convs have a bias only without norm.
            top_block (nn.Module or None): extra levels computed from an output (or a bottom-up
                feature), with ``num_levels`` and ``in_feature`` attributes, e.g.
                ``LastLevelMaxPool()`` for p6.
            fuse_type (str): ``"sum"`` or ``"avg"``: how every element-wise merge of the neck
                combines its terms (``"avg"`` = sum / number of terms).
            square_pad (int): if > 0, input images must be padded to this square size
                (``padding_constraints``).
            share_laterals (bool): BUF pathway reuses the TD laterals (``td+buf`` / ``sa`` only).
            fuse_position (str): ``"after"`` (faithful: merge the two pathways' outputs) or
                ``"before"`` (merge the pre-output sums, one output conv per level);
                ``td+buf`` / ``sa`` only.
            td_only_levels (list[str]): output names of the finest levels (a prefix of the
                pyramid, not all of it) that output the TD pathway alone; ``td+buf`` / ``sa``
                only. Empty = faithful.
        """
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise TypeError(f"SAFPN: bottom_up must be a Backbone, got {type(bottom_up)}")
        if top_block is not None and not isinstance(top_block, nn.Module):
            raise TypeError(
                f"SAFPN: top_block must be an nn.Module (e.g. LastLevelMaxPool()) or None, got "
                f"{type(top_block).__name__} {top_block!r}"
            )
        if not in_features:
            raise ValueError("SAFPN: in_features must not be empty")
        if mode not in SAFPN_MODES:
            raise ValueError(f"SAFPN: unknown mode {mode!r}; expected one of {SAFPN_MODES}")
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"SAFPN: unknown fuse_type {fuse_type!r}; expected 'sum' or 'avg'")
        if fuse_position not in _FUSE_POSITIONS:
            raise ValueError(
                f"SAFPN: unknown fuse_position {fuse_position!r}; expected one of "
                f"{_FUSE_POSITIONS}"
            )

        input_shapes = bottom_up.output_shape()
        strides = [input_shapes[f].stride for f in in_features]
        in_channels = [input_shapes[f].channels for f in in_features]
        for prev, cur in zip(strides[:-1], strides[1:]):
            if cur != 2 * prev:
                raise ValueError(
                    f"SAFPN: strides {strides} of {in_features} are not log2 contiguous"
                )
        stages = [int(math.log2(s)) for s in strides]
        level_names = ["p{}".format(s) for s in stages]

        two_paths = mode in ("td+buf", "sa")
        td_only_levels = list(td_only_levels)
        if not two_paths:
            for name, value, default in (
                ("share_laterals", share_laterals, False),
                ("fuse_position", fuse_position, "after"),
                ("td_only_levels", td_only_levels, []),
            ):
                if value != default:
                    raise ValueError(
                        f"SAFPN: {name}={value!r} needs both pathways (mode 'td+buf' or 'sa'), "
                        f"got mode {mode!r}"
                    )
        if td_only_levels:
            n = len(td_only_levels)
            if n >= len(level_names) or td_only_levels != level_names[:n]:
                raise ValueError(
                    f"SAFPN: td_only_levels must be the finest levels, a strict prefix of "
                    f"{level_names}; got {td_only_levels}"
                )

        self.in_features = tuple(in_features)
        self._mode = mode
        self._fuse_type = fuse_type
        self._fuse_position = fuse_position
        self._share_laterals = bool(share_laterals)
        self._num_td_only = len(td_only_levels)
        self._stages = stages
        self._square_pad = square_pad

        use_bias = norm == ""

        def conv(name, c_in, kernel_size, stride=1):
            layer = Conv2d(
                c_in,
                out_channels,
                kernel_size=kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            weight_init.c2_xavier_fill(layer)
            self.add_module(name, layer)
            return layer

        has_td = mode in ("td", "td+buf", "sa")
        has_bu = mode in ("bu", "buf", "td+buf", "sa")
        before = two_paths and fuse_position == "before"
        n_levels = len(stages)
        # Python lists (modules are registered by add_module), ordered fine -> coarse.
        self.td_laterals, self.td_outputs = [], []
        self.bu_laterals, self.bu_downs, self.bu_outputs = [], [], []
        self.sa_fuses = []
        for k, (stage, c_in) in enumerate(zip(stages, in_channels)):
            fused_here = k >= self._num_td_only
            if has_td:
                self.td_laterals.append(conv(f"fpn_lateral{stage}", c_in, 1))
                self.td_outputs.append(conv(f"fpn_output{stage}", out_channels, 3))
            if has_bu:
                if self._share_laterals:
                    self.bu_laterals.append(self.td_laterals[k])
                else:
                    self.bu_laterals.append(conv(f"buf_lateral{stage}", c_in, 1))
                down = conv(f"buf_down{stage}", out_channels, 3, stride=2) if k > 0 else None
                self.bu_downs.append(down)
                needs_output = not two_paths or (fused_here and not before)
                self.bu_outputs.append(
                    conv(f"buf_output{stage}", out_channels, 3) if needs_output else None
                )
            if mode == "sa":
                self.sa_fuses.append(
                    conv(f"sa_fuse{stage}", 2 * out_channels, 1) if fused_here else None
                )
        assert len(self.td_outputs) in (0, n_levels)
        self.top_block = top_block
        self.bottom_up = bottom_up

        self._out_feature_strides = {name: 2**s for name, s in zip(level_names, stages)}
        if top_block is not None:
            last = stages[-1]
            for s in range(last + 1, last + 1 + top_block.num_levels):
                self._out_feature_strides["p{}".format(s)] = 2**s
        self._out_features = list(self._out_feature_strides.keys())
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._size_divisibility = strides[-1]

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        """Build a ResNet bottom-up and read the neck's arguments from a yacs config.

        Args:
            cfg (CfgNode): a Detectron2 config with :func:`sa_ejhead.add_sa_ejhead_config` keys.
            input_shape (ShapeSpec): the image's shape (channels).

        Returns:
            dict: keyword arguments of :class:`SAFPN`.
        """
        return {
            "bottom_up": build_resnet_backbone(cfg, input_shape),
            "in_features": cfg.MODEL.FPN.IN_FEATURES,
            "out_channels": cfg.MODEL.FPN.OUT_CHANNELS,
            "mode": cfg.MODEL.SAFPN.MODE,
            "norm": cfg.MODEL.FPN.NORM,
            "top_block": LastLevelMaxPool(),
            "fuse_type": cfg.MODEL.FPN.FUSE_TYPE,
            "square_pad": cfg.MODEL.SAFPN.SQUARE_PAD,
            "share_laterals": cfg.MODEL.SAFPN.SHARE_LATERALS,
            "fuse_position": cfg.MODEL.SAFPN.FUSE_POSITION,
            "td_only_levels": list(cfg.MODEL.SAFPN.TD_ONLY_LEVELS),
        }

    @property
    def mode(self) -> str:
        """str: the neck's mode (one of :data:`SAFPN_MODES`)."""
        return self._mode

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"square_size": self._square_pad}

    def _merge(self, terms: List[torch.Tensor]) -> torch.Tensor:
        """Element-wise sum (``fuse_type="sum"``) or mean (``"avg"``) of same-shape maps."""
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        if self._fuse_type == "avg" and len(terms) > 1:
            out = out / len(terms)
        return out

    def _top_down(self, laterals: List[torch.Tensor]) -> List[torch.Tensor]:
        """Pre-output sums T_i of the top-down pathway from its laterals, fine -> coarse."""
        sums = [laterals[-1]]
        for lateral in laterals[-2::-1]:
            sums.insert(0, self._merge([lateral, _resize_nearest(sums[0], lateral)]))
        return sums

    def _bottom_up(self, laterals: List[Optional[torch.Tensor]]) -> Iterator[torch.Tensor]:
        """Pre-output sums B_i of the BU / BUF pathway from its laterals, fine -> coarse, one at a
        time. Sets each entry of ``laterals`` to None once no later sum needs it, so that only the
        previous sum and the laterals still to come stay alive (peak memory)."""
        fuse_upper = self._mode != "bu"
        prev = None
        for k in range(len(laterals)):
            lateral, laterals[k] = laterals[k], None
            terms = [lateral]
            if k > 0:
                terms.append(_match_size(self.bu_downs[k](prev), lateral))
            if fuse_upper and k + 1 < len(laterals):
                terms.append(_resize_nearest(laterals[k + 1], lateral))
            del lateral
            prev = self._merge(terms)
            del terms
            yield prev

    def _pyramid(self, feats: List[Optional[torch.Tensor]]) -> List[torch.Tensor]:
        """The neck's outputs for the input levels, fine -> coarse (before ``top_block``).

        Sets each entry of ``feats`` to None once its laterals exist, and drops every intermediate
        map as soon as the last op that needs it has run (a TD-only level's output before its
        B_i exists; one B_i at a time), so the two pathways add little to one FPN's peak memory.
        Only the order of independent ops differs from the plain formulas: the outputs are the
        same, bit for bit.
        """
        mode = self._mode
        td_laterals: List[Optional[torch.Tensor]] = []
        bu_laterals: List[Optional[torch.Tensor]] = []
        for k in range(len(feats)):
            f, feats[k] = feats[k], None
            if self.td_laterals:
                td_laterals.append(self.td_laterals[k](f))
            if self.bu_laterals and not self._share_laterals:
                bu_laterals.append(self.bu_laterals[k](f))
            del f
        if self._share_laterals:
            bu_laterals = td_laterals  # _bottom_up releases them after _top_down has used them
        if mode == "td":
            return [o(t) for o, t in zip(self.td_outputs, self._top_down(td_laterals))]
        if mode in ("bu", "buf"):
            return [o(b) for o, b in zip(self.bu_outputs, self._bottom_up(bu_laterals))]

        # td+buf and sa
        td = self._top_down(td_laterals)
        del td_laterals
        bu = self._bottom_up(bu_laterals)
        results = []
        for k in range(len(td)):
            t, td[k] = td[k], None
            if k < self._num_td_only:
                results.append(self.td_outputs[k](t))
                del t
                next(bu)  # B_k is needed by B_{k+1} only
                continue
            b = next(bu)
            if self._fuse_position == "after":
                t, b = self.td_outputs[k](t), self.bu_outputs[k](b)
            if mode == "sa":
                fused = self.sa_fuses[k](torch.cat([t, b], dim=1))  # N x 2C x H x W -> C
            else:
                fused = self._merge([t, b])
            del t, b
            if self._fuse_position == "before":
                fused = self.td_outputs[k](fused)
            results.append(fused)
        return results

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Compute the pyramid.

        Args:
            x (Tensor): N x C x H x W images (any H, W; the model pads them to
                ``size_divisibility``).

        Returns:
            dict[str, Tensor]: ``"p<stage>"`` -> N x out_channels x ceil(H / 2**stage) x ...,
            e.g. ``p2..p6`` with strides 4..64.
        """
        bottom_up_features = self.bottom_up(x)
        feats = [bottom_up_features[f] for f in self.in_features]
        top_in = None
        if self.top_block is not None:
            top_in = bottom_up_features.get(self.top_block.in_feature)
        del bottom_up_features  # _pyramid releases each level's features once used
        results = self._pyramid(feats)
        if self.top_block is not None:
            if top_in is None:
                top_in = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_in))
        assert len(results) == len(self._out_features)
        return dict(zip(self._out_features, results))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_resnet_safpn_backbone(cfg, input_shape: ShapeSpec):
    """Build a ResNet + SA-FPN backbone from a yacs config (``MODEL.BACKBONE.NAME``).

    Reads ``MODEL.RESNETS.*`` for the bottom-up, ``MODEL.FPN.{IN_FEATURES, OUT_CHANNELS, NORM,
    FUSE_TYPE}`` as Detectron2's ``build_resnet_fpn_backbone`` does, and ``MODEL.SAFPN.*``; p6 is
    ``LastLevelMaxPool``.

    Args:
        cfg (CfgNode): a config with :func:`sa_ejhead.add_sa_ejhead_config` applied.
        input_shape (ShapeSpec): the image's shape (channels).

    Returns:
        SAFPN: the backbone.
    """
    return SAFPN(cfg, input_shape)
