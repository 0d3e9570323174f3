"""EJ-Head: Mask R-CNN ROI heads with Enriched Feature, shared Boundary Refinement and Interleaving.

See docs/design.md, EJ-Head. Both classes only override Detectron2's narrow hooks (box/mask forward,
the cascade stage, the box-head builder); the training ``forward`` is overridden only when
interleaving is on, because the re-matching needs all the ground truth of each image, which
``StandardROIHeads.forward`` does not hand to the mask branch.
"""

import logging
import math
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from detectron2.config import configurable
from detectron2.layers import ROIAlign, cat
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    CascadeROIHeads,
    StandardROIHeads,
    select_foreground_proposals,
)
from detectron2.modeling.roi_heads.cascade_rcnn import _ScaleGradient
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from .poolers import ThreadedROIAlign, _is_tracing, use_threaded_roi_align
from .refinement import build_refinement

__all__ = ["EJROIHeads", "EJCascadeROIHeads", "REFINEMENT_SCOPES", "direct_box_pooler"]

logger = logging.getLogger(__name__)

REFINEMENT_SCOPES = ("shared", "box")

# The objectness logit Detectron2's add_ground_truth_to_proposals gives the GT boxes it appends
# (P(object) = 1 - 1e-10); together with exact box equality it marks an appended GT proposal.
_GT_PROPOSAL_LOGIT = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


def _box_pooler_at(cfg, input_shape, resolution: int) -> ROIPooler:
    in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
    return ROIPooler(
        output_size=resolution,
        scales=tuple(1.0 / input_shape[k].stride for k in in_features),
        sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
        pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
    )


def direct_box_pooler(pooler: ROIPooler, factor: int) -> Optional[ROIPooler]:
    """
    The pooler whose output equals ``avg_pool2d(pooler(x, boxes), factor)``, computed without the
    full-resolution RoIs, or None where there is no such pooler (docs/design.md, "Exact
    downsampled box pooling").

    With a fixed sampling ratio ``s > 0``, an ``S x S`` RoIAlign followed by a ``factor x factor``
    average pool is an ``(S / factor) x (S / factor)`` RoIAlign with sampling ratio
    ``factor * s``: both average the same ``(factor * s)^2`` bilinear samples per output cell
    (the sample points of a coarse bin are exactly those of its ``factor x factor`` fine bins);
    only the float summation order differs. The adaptive ratio (``s = 0``) depends on the bin
    size, so it has no such equivalent.

    Args:
        pooler (ROIPooler): the full-resolution pooler (e.g. the Enriched Feature's 14x14).
        factor (int): the average-pool factor (``box_refinement_downsample``).

    Returns:
        ROIPooler or None: a pooler with the same scales, level assignment (canonical box size
        and level), ``aligned`` flag and RoIAlign class (a :class:`ThreadedROIAlign` keeps its
        ``min_rois_per_thread`` and ``threaded_inference``), at ``output_size // factor`` and
        sampling ratio ``factor * s``; None when ``factor == 1``, the ratio is adaptive (0),
        the levels are not RoIAlign (RoIPool, rotated RoIAlign), ``output_size`` is not
        divisible by ``factor``, or ``pooler`` overrides :meth:`ROIPooler.forward`.
    """
    levels = list(pooler.level_poolers)
    if (
        factor <= 1
        or type(pooler).forward is not ROIPooler.forward
        or not levels
        or any(type(level) not in (ROIAlign, ThreadedROIAlign) for level in levels)
        or any(size % factor for size in pooler.output_size)
    ):
        return None
    ratios = {int(level.sampling_ratio) for level in levels}
    aligned = {bool(level.aligned) for level in levels}
    if len(ratios) != 1 or len(aligned) != 1:
        return None
    (ratio,), (is_aligned,) = ratios, aligned
    if ratio <= 0:  # adaptive: the number of samples depends on the bin size
        return None
    direct = ROIPooler(
        output_size=tuple(size // factor for size in pooler.output_size),
        scales=tuple(level.spatial_scale for level in levels),
        sampling_ratio=factor * ratio,
        pooler_type="ROIAlignV2" if is_aligned else "ROIAlign",
        canonical_box_size=pooler.canonical_box_size,
        canonical_level=pooler.canonical_level,
    )
    threaded = [level for level in levels if isinstance(level, ThreadedROIAlign)]
    if threaded:
        use_threaded_roi_align(
            direct, threaded[0].min_rois_per_thread, threaded[0].threaded_inference
        )
    return direct


class _EJHeadMixin:
    """The parts of EJ-Head common to the single-stage and the cascade ROI heads."""

    @configurable
    def __init__(
        self,
        *,
        refinement: Optional[nn.Module] = None,
        refinement_scope: str = "shared",
        box_refinement_downsample: int = 1,
        interleave: bool = False,
        interleave_append_gt: bool = True,
        interleave_iou_threshold: float = 0.5,
        interleave_max_positives: int = 128,
        threaded_pooling: bool = True,
        threaded_inference_pooling: bool = True,
        box_inference_chunk: int = 256,
        checkpoint_refinement: bool = False,
        checkpoint_chunk: int = 256,
        **kwargs,
    ):
        """
        Args:
            refinement (nn.Module or None): applied to the pooled RoI features (R x C x S x S ->
                same shape), e.g. :class:`BoundaryRefinement`; None for no refinement.
            refinement_scope (str): "shared" (box and mask RoIs, one set of parameters) or
                "box" (box RoIs only).
            box_refinement_downsample (int): efficiency lever; 1 (faithful) refines the box RoIs
                at the pooler's resolution, k > 1 average-pools them by k first (14x14 -> 7x7 for
                k=2; the box head then takes the smaller input). Mask RoIs are never downsampled.
                With a fixed sampling ratio s > 0 of the box pooler, the pooled-then-averaged
                RoIs are computed exactly by one RoIAlign at (resolution / k) with ratio k * s
                (``box_direct_pooler``, :func:`direct_box_pooler`): the full-resolution RoIs are
                never built. With the adaptive ratio (s = 0, Detectron2's default) the box
                pooler runs at full resolution and the RoIs are average-pooled, as before.
            interleave (bool): train the mask branch on the regressed boxes.
            interleave_append_gt (bool): re-append the GT boxes to the interleaved positives.
            interleave_iou_threshold (float): IoU for a regressed box to be a positive.
            interleave_max_positives (int): at most this many mask positives per image.
            threaded_pooling (bool): on the CPU, split the RoIAlign of the box/mask poolers,
                and its backward in training, over the torch threads (:class:`ThreadedROIAlign`;
                the same output and gradient).
            threaded_inference_pooling (bool): with ``threaded_pooling``, False splits only
                the pooling that autograd records (training) and pools in one call at
                inference: less peak memory, more latency (``ThreadedROIAlign``'s
                ``threaded_inference``).
            kwargs: the arguments of :class:`StandardROIHeads` (or :class:`CascadeROIHeads`).
            box_inference_chunk (int): memory only (the same outputs up to float summation
                order): at inference (no autograd) the pooled box RoIs are refined and run
                through the box head this many at a time, so the refinement's intermediate
                tensors exist for one chunk instead of all 1000 RoIs; 0 runs them all at once.
                Not while tracing.
            checkpoint_refinement (bool): memory only, in training (same losses and gradients
                up to float summation order): the RoI pooling and the refinement run under
                activation checkpointing, so the pooled RoIs and the refinement's inner maps are
                recomputed in the backward instead of kept from the forward. Costs one more
                pooling and refinement forward per step.
            checkpoint_chunk (int): memory only, with ``checkpoint_refinement``: the
                checkpointed forward (which keeps no graph) pools and refines the box and mask
                RoIs this many at a time (0: all at once), and so does the backward's
                recomputation.
        """
        super().__init__(**kwargs)
        # a wrong type fails here, not at the first forward (e.g. refinement="none")
        if refinement is not None and not isinstance(refinement, nn.Module):
            raise TypeError(
                f"refinement must be an nn.Module (e.g. BoundaryRefinement(channels, "
                f"mode=...)) or None, got {type(refinement).__name__} {refinement!r}"
            )
        if refinement_scope not in REFINEMENT_SCOPES:
            raise ValueError(
                f"Unknown refinement_scope '{refinement_scope}'; expected one of "
                f"{REFINEMENT_SCOPES}"
            )
        if int(box_refinement_downsample) != box_refinement_downsample or (
            box_refinement_downsample < 1
        ):
            raise ValueError(
                f"box_refinement_downsample must be a positive integer, got "
                f"{box_refinement_downsample}"
            )
        if interleave and self.train_on_pred_boxes:
            raise ValueError("interleave=True and train_on_pred_boxes=True are exclusive")
        if interleave_max_positives < 1:
            raise ValueError(
                f"interleave_max_positives must be >= 1, got {interleave_max_positives}"
            )
        if (
            refinement is not None
            and refinement_scope == "shared"
            and self.mask_on
            and self.mask_pooler is None
        ):
            raise ValueError("refinement_scope='shared' needs a mask_pooler (pooled mask RoIs)")
        # One module (one set of parameters) for the box RoIs and, with scope "shared", the mask
        # RoIs; None when there is no refinement (Table 5's "None").
        self.refinement = refinement
        self.refinement_scope = refinement_scope
        self.box_refinement_downsample = int(box_refinement_downsample)
        self.interleave = interleave
        self.interleave_append_gt = interleave_append_gt
        self.interleave_max_positives = interleave_max_positives
        self.interleave_matcher = Matcher(
            [interleave_iou_threshold], [0, 1], allow_low_quality_matches=False
        )
        # Speed only (bit-identical output and gradient): the RoIAlign levels split their work
        # over the CPU threads (torchvision's CPU kernels use one); see poolers.py.
        self.threaded_pooling = threaded_pooling
        self.threaded_inference_pooling = bool(threaded_inference_pooling)
        if int(box_inference_chunk) != box_inference_chunk or box_inference_chunk < 0:
            raise ValueError(
                f"box_inference_chunk must be an integer >= 0, got {box_inference_chunk}"
            )
        if int(checkpoint_chunk) != checkpoint_chunk or checkpoint_chunk < 0:
            raise ValueError(f"checkpoint_chunk must be an integer >= 0, got {checkpoint_chunk}")
        self.box_inference_chunk = int(box_inference_chunk)
        self.checkpoint_refinement = bool(checkpoint_refinement)
        self.checkpoint_chunk = int(checkpoint_chunk)
        if threaded_pooling:
            for name in ("box_pooler", "mask_pooler", "keypoint_pooler"):
                if getattr(self, name, None) is not None:
                    use_threaded_roi_align(
                        getattr(self, name), threaded_inference=threaded_inference_pooling
                    )
        # Box RoIs pooled straight to the downsampled size where that is exact (same numbers as
        # the box pooler + average pool, docs/design.md); None: the box pooler + average pool.
        self.box_direct_pooler = None
        box_pooler = getattr(self, "box_pooler", None)
        if box_pooler is not None and self.box_refinement_downsample > 1:
            self.box_direct_pooler = direct_box_pooler(box_pooler, self.box_refinement_downsample)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ej = cfg.MODEL.EJ_HEAD
        channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
        ret.update(
            refinement=build_refinement(cfg, channels),
            refinement_scope=ej.REFINEMENT_SCOPE,
            box_refinement_downsample=ej.BOX_REFINEMENT_DOWNSAMPLE,
            interleave=ej.INTERLEAVE,
            interleave_append_gt=ej.INTERLEAVE_APPEND_GT,
            interleave_iou_threshold=ej.INTERLEAVE_IOU_THRESHOLD,
            interleave_max_positives=ej.INTERLEAVE_MAX_POSITIVES,
            threaded_pooling=ej.THREADED_POOLING,
            threaded_inference_pooling=ej.THREADED_INFERENCE_POOLING,
            box_inference_chunk=ej.BOX_INFERENCE_CHUNK,
            checkpoint_refinement=ej.CHECKPOINT_REFINEMENT,
            checkpoint_chunk=ej.CHECKPOINT_CHUNK,
        )
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        """Build the box pooler at ``POOLER_RESOLUTION`` and the box head(s) for the (optionally
        downsampled) refined feature; check that ``BOX_FC_INPUT`` reaches the box head."""
        ej = cfg.MODEL.EJ_HEAD
        if ej.BOX_FC_INPUT != "flatten" and cfg.MODEL.ROI_BOX_HEAD.NAME == "FastRCNNConvFCHead":
            raise ValueError(
                f"MODEL.EJ_HEAD.BOX_FC_INPUT='{ej.BOX_FC_INPUT}' needs "
                "MODEL.ROI_BOX_HEAD.NAME='EJFastRCNNConvFCHead'"
            )
        factor = ej.BOX_REFINEMENT_DOWNSAMPLE
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        if factor == 1:
            return super()._init_box_head(cfg, input_shape)
        if resolution % factor:
            raise ValueError(
                f"POOLER_RESOLUTION={resolution} is not divisible by "
                f"BOX_REFINEMENT_DOWNSAMPLE={factor}"
            )
        # Build the head(s) for the downsampled feature, then pool at the full resolution.
        head_cfg = cfg.clone()
        head_cfg.defrost()
        head_cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = resolution // factor
        ret = super()._init_box_head(head_cfg, input_shape)
        ret["box_pooler"] = _box_pooler_at(cfg, input_shape, resolution)
        return ret

    @property
    def _interleave_on(self) -> bool:
        return self.interleave and self.mask_on

    def _pool_box_features(self, features: List[torch.Tensor], boxes: List[Boxes]) -> torch.Tensor:
        """The box RoIs, R x C x S x S with S = the box pooler's resolution divided by
        ``box_refinement_downsample`` (14 for the Enriched Feature, 7 when downsampled by 2):
        ``box_direct_pooler`` when there is one, else the box pooler then the average pool."""
        if self.box_direct_pooler is not None:
            return self.box_direct_pooler(features, boxes)
        x = self.box_pooler(features, boxes)
        if self.box_refinement_downsample > 1:
            x = F.avg_pool2d(x, self.box_refinement_downsample)
        return x

    def _refine_box_features(self, x: torch.Tensor) -> torch.Tensor:
        # x: R x C x S x S pooled (and downsampled) box RoIs, from _pool_box_features
        if self.refinement is not None:
            x = self.refinement(x)
        return x

    def _refine_mask_features(self, x: torch.Tensor) -> torch.Tensor:
        # x: R x C x 14 x 14 pooled mask RoIs
        if self.refinement is not None and self.refinement_scope == "shared":
            x = self.refinement(x)
        return x

    def _checkpointing(self, mask: bool = False) -> bool:
        """Whether the pooling + refinement of the box (or mask) RoIs runs checkpointed now."""
        refined = self.refinement is not None and (not mask or self.refinement_scope == "shared")
        return self.checkpoint_refinement and refined and self.training and torch.is_grad_enabled()

    def _pool_and_refine(self, pool, refine, features: List[torch.Tensor], boxes, mask=False):
        """``refine(pool(features, boxes))``. Checkpointed (:meth:`_checkpointing`), the forward
        (which keeps no graph) runs ``checkpoint_chunk`` RoIs at a time, so that the pooled
        RoIs and the inner maps exist for one chunk only."""
        on = self._checkpointing(mask)
        chunk = self.checkpoint_chunk if on else 0

        def run(fs):
            return _in_chunks(lambda part: refine(pool(fs, part)), boxes, chunk)

        return _maybe_checkpointed(run, features, on)

    def _pooled_refined_box_features(self, features: List[torch.Tensor], boxes: List[Boxes]):
        """The refined box RoIs: :meth:`_pool_box_features` then the refinement."""
        return self._pool_and_refine(
            self._pool_box_features, self._refine_box_features, features, boxes
        )

    def forward(self, images, features, proposals, targets=None):
        """
        See :meth:`StandardROIHeads.forward`. With interleaving in training, the mask branch
        trains on the box branch's regressed boxes (:meth:`_interleave_instances`).
        """
        if not (self.training and self._interleave_on):
            return super().forward(images, features, proposals, targets)
        if not targets:
            raise ValueError("'targets' argument is required during training")
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses, boxes, from_gt = self._forward_box_interleaved(features, proposals, targets)
        mask_instances = self._interleave_instances(boxes, from_gt, targets)
        losses.update(self._forward_mask(features, mask_instances))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        """
        Like :meth:`StandardROIHeads._forward_mask`, with the shared refinement applied to the
        pooled mask RoIs (scope "shared").

        Args:
            features (dict[str, Tensor]): the FPN features.
            instances (list[Instances]): in training, the proposals or the interleaved
                instances (fields ``proposal_boxes``, ``gt_classes``, ``gt_masks``); in
                inference, the post-NMS detections.

        Returns:
            In training, a dict of losses; in inference, ``instances`` with ``pred_masks``.
        """
        if not self.mask_on:
            return {} if self.training else instances
        if self.mask_pooler is None:
            return super()._forward_mask(features, instances)
        if self.training:
            # the mask head trains on positives only (interleaved instances are all positive)
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]

        features = [features[f] for f in self.mask_in_features]
        mask_features = self._pool_and_refine(
            self.mask_pooler, self._refine_mask_features, features, boxes, mask=True
        )
        return self.mask_head(mask_features, instances)

    @torch.no_grad()
    def _regress_for_gt_classes(
        self, predictor: nn.Module, predictions, proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """
        Regress every proposal with the deltas of its GT class; background (and ignored)
        proposals use their highest-scoring foreground class. Without gradient.

        Returns:
            list[Tensor]: per image, Ri x 4 regressed boxes (not clipped).
        """
        scores, deltas = predictions[0], predictions[1]
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        num, box_dim = proposal_boxes.shape
        pred = predictor.box2box_transform.apply_deltas(deltas, proposal_boxes)  # N x (K*4)
        num_reg_classes = pred.shape[1] // box_dim
        if num_reg_classes > 1:
            gt_classes = cat([p.gt_classes for p in proposals], dim=0)
            best_fg = scores[:, :-1].argmax(dim=1)
            is_fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
            classes = torch.where(is_fg, gt_classes, best_fg)
            pred = pred.view(num, num_reg_classes, box_dim)[
                torch.arange(num, device=pred.device), classes
            ]
        return list(pred.detach().split([len(p) for p in proposals]))

    @torch.no_grad()
    def _appended_gt_flags(self, proposals: Instances, targets: Instances) -> torch.Tensor:
        """
        Mark the proposals that are GT boxes appended by ``add_ground_truth_to_proposals``: the
        box equals a GT box exactly and the objectness logit is the one Detectron2 gives them.

        Returns:
            Tensor: bool, one per proposal.
        """
        boxes = proposals.proposal_boxes.tensor
        flags = torch.zeros(len(proposals), dtype=torch.bool, device=boxes.device)
        if not self.proposal_append_gt or len(targets) == 0 or len(proposals) == 0:
            return flags
        same_box = (boxes[:, None, :] == targets.gt_boxes.tensor[None, :, :]).all(dim=2).any(1)
        if proposals.has("objectness_logits"):
            logits = proposals.objectness_logits
            same_box &= (logits - _GT_PROPOSAL_LOGIT).abs() < 1e-3
        return same_box

    @torch.no_grad()
    def _interleave_instances(
        self,
        boxes: List[torch.Tensor],
        from_gt: List[torch.Tensor],
        targets: List[Instances],
    ) -> List[Instances]:
        """
        Build the mask branch's training instances from the box branch's regressed boxes
        (docs/design.md, EJ-Head, interleaving steps 2-4): drop the boxes regressed from
        appended GT proposals, clip, drop empty boxes, re-match to the GT at the IoU threshold
        (no low-quality matches), re-append the GT boxes (``interleave_append_gt``) and keep at
        most ``interleave_max_positives`` random positives.

        Args:
            boxes (list[Tensor]): per image, Ri x 4 regressed boxes (detached).
            from_gt (list[Tensor]): per image, Ri bools marking appended GT proposals.
            targets (list[Instances]): the ground truth of each image.

        Returns:
            list[Instances]: per image, positives with ``proposal_boxes`` (the regressed boxes,
            used to crop the mask targets), ``gt_classes`` and the other ``gt_*`` fields of
            their matched GT (``gt_masks``, ``gt_boxes``).
        """
        results = []
        num_regressed_pos, num_pos, num_dropped_gt = [], [], []
        for boxes_i, from_gt_i, targets_i in zip(boxes, from_gt, targets):
            num_dropped_gt.append(int(from_gt_i.sum()))
            image_boxes = Boxes(boxes_i[~from_gt_i].detach().clone())
            image_boxes.clip(targets_i.image_size)
            image_boxes = image_boxes[image_boxes.nonempty()]
            device = image_boxes.tensor.device
            result = Instances(targets_i.image_size)
            if len(targets_i) == 0:
                result.proposal_boxes = image_boxes[:0]
                result.gt_classes = torch.zeros(0, dtype=torch.int64, device=device)
                num_regressed_pos.append(0)
                num_pos.append(0)
                results.append(result)
                continue
            matched_idxs, labels = self.interleave_matcher(
                pairwise_iou(targets_i.gt_boxes, image_boxes)
            )
            keep = torch.nonzero(labels == 1).squeeze(1)
            image_boxes, gt_idxs = image_boxes[keep], matched_idxs[keep]
            num_regressed_pos.append(len(keep))
            if self.interleave_append_gt:
                image_boxes = Boxes.cat([image_boxes, targets_i.gt_boxes])
                gt_idxs = torch.cat([gt_idxs, torch.arange(len(targets_i), device=device)])
            if len(gt_idxs) > self.interleave_max_positives:
                pick = torch.randperm(len(gt_idxs), device=device)[: self.interleave_max_positives]
                image_boxes, gt_idxs = image_boxes[pick], gt_idxs[pick]
            result.proposal_boxes = image_boxes
            for name, value in targets_i.get_fields().items():
                if name.startswith("gt_"):
                    result.set(name, value[gt_idxs])
            num_pos.append(len(gt_idxs))
            results.append(result)

        storage = get_event_storage()
        n = max(len(results), 1)
        storage.put_scalar("roi_head/interleave_num_regressed_pos", sum(num_regressed_pos) / n)
        storage.put_scalar("roi_head/interleave_num_pos", sum(num_pos) / n)
        storage.put_scalar("roi_head/interleave_num_dropped_gt", sum(num_dropped_gt) / n)
        return results


@ROI_HEADS_REGISTRY.register()
class EJROIHeads(_EJHeadMixin, StandardROIHeads):
    """
    The EJ-Head (Effective Joint Head) of the paper: ``StandardROIHeads`` with three independent
    switches (docs/design.md, EJ-Head):

    1. Enriched Feature: the ``box_pooler`` at 14x14 (its ``output_size``), with a box head for
       14x14 inputs (:class:`EJFastRCNNConvFCHead`, ``box_fc_input``); with
       ``box_refinement_downsample=k`` the box RoIs are average-pooled by k, or, where the box
       pooler has a fixed sampling ratio s > 0, pooled directly at 14/k with ratio k * s, which
       gives the same numbers (``box_direct_pooler``);
    2. Boundary Refinement: ``refinement`` (a :class:`BoundaryRefinement` or None) right after the
       RoIAlign, shared by the box and the mask RoIs (``refinement_scope="shared"``) or applied
       to the box RoIs only (``"box"``);
    3. Interleaving (``interleave``, training only): the mask branch trains on the box branch's
       regressed boxes re-matched to the GT.

    With ``refinement=None``, ``interleave=False``, ``box_refinement_downsample=1`` and a 7x7
    pooler it is exactly ``StandardROIHeads``. Inference is Mask R-CNN's: masks are predicted on
    the post-NMS boxes (refined by the shared refinement). Arguments: those of
    ``_EJHeadMixin.__init__``, and of :class:`StandardROIHeads` for the rest.
    """

    def _box_predictions(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        features = [features[f] for f in self.box_in_features]
        boxes = [x.proposal_boxes for x in proposals]
        chunk = self.box_inference_chunk
        if (
            chunk > 0
            and sum(len(b) for b in boxes) > chunk
            and not self.training
            and not torch.is_grad_enabled()
            and not _is_tracing()
        ):
            # per-RoI operations: the same numbers, the refinement's tensors for one chunk only.
            # The pooling goes at once: pooling in chunks too lowers the live peak further but
            # raised the peak RSS (glibc keeps more of the freed chunks; docs/design.md)
            box_features = self._pool_box_features(features, boxes)
            heads = [
                self.box_head(self._refine_box_features(part)) for part in box_features.split(chunk)
            ]
            return self.box_predictor(torch.cat(heads))
        box_features = self._pooled_refined_box_features(features, boxes)  # R x C x S x S
        return self.box_predictor(self.box_head(box_features))

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """
        Like :meth:`StandardROIHeads._forward_box`, with the refinement on the pooled RoIs.

        Returns:
            In training, a dict of losses; in inference, the predicted instances.
        """
        predictions = self._box_predictions(features, proposals)
        if not self.training:
            pred_instances, _ = self.box_predictor.inference(predictions, proposals)
            return pred_instances
        losses = self.box_predictor.losses(predictions, proposals)
        if self.train_on_pred_boxes:
            with torch.no_grad():
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                for proposals_per_image, pred_boxes_per_image in zip(proposals, pred_boxes):
                    proposals_per_image.proposal_boxes = Boxes(pred_boxes_per_image)
        return losses

    def _forward_box_interleaved(self, features, proposals, targets):
        """
        Box losses on the sampled proposals, plus the regressed boxes for interleaving.

        Returns:
            dict[str, Tensor]: the box losses.
            list[Tensor]: per image, the regressed (detached) boxes of the sampled proposals.
            list[Tensor]: per image, bools marking the appended GT proposals.
        """
        predictions = self._box_predictions(features, proposals)
        losses = self.box_predictor.losses(predictions, proposals)
        boxes = self._regress_for_gt_classes(self.box_predictor, predictions, proposals)
        from_gt = [self._appended_gt_flags(p, t) for p, t in zip(proposals, targets)]
        return losses, boxes, from_gt


@ROI_HEADS_REGISTRY.register()
class EJCascadeROIHeads(_EJHeadMixin, CascadeROIHeads):
    """
    EJ-Head on Cascade R-CNN: every stage pools 14x14 and refines with the (one, shared)
    refinement; with interleaving the mask branch trains on the last stage's regressed boxes,
    re-matched to the GT at ``interleave_iou_threshold``.

    Arguments: those of :class:`EJROIHeads`, and of :class:`CascadeROIHeads` for the rest.
    """

    def _run_stage(self, features: List[torch.Tensor], proposals: List[Instances], stage: int):
        """Like :meth:`CascadeROIHeads._run_stage`, with the refinement on the pooled RoIs."""
        # The refinement is shared by all stages, like the features: it sees the average of the
        # stage losses, while each stage's head sees its own loss (as CascadeROIHeads).
        box_features = self._pooled_refined_box_features(
            features, [x.proposal_boxes for x in proposals]
        )
        if self.training:
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)

    def _forward_box_interleaved(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: List[Instances],
    ) -> Tuple[Dict[str, torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """
        The training stages of :meth:`CascadeROIHeads._forward_box`, also returning the last
        stage's regressed boxes and which of them descend from appended GT proposals.

        Returns:
            See :meth:`EJROIHeads._forward_box_interleaved`.
        """
        features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        from_gt = [self._appended_gt_flags(p, t) for p, t in zip(proposals, targets)]
        storage = get_event_storage()
        losses, prev_boxes = {}, None
        for stage in range(self.num_cascade_stages):
            if stage > 0:
                # _create_proposals_from_boxes drops the boxes empty after clipping: follow it
                from_gt = [
                    f[_nonempty_after_clip(b, size)]
                    for f, b, size in zip(from_gt, prev_boxes, image_sizes)
                ]
                proposals = self._create_proposals_from_boxes(prev_boxes, image_sizes)
                proposals = self._match_and_label_boxes(proposals, stage, targets)
            predictions = self._run_stage(features, proposals, stage)
            with storage.name_scope(f"stage{stage}"):
                stage_losses = self.box_predictor[stage].losses(predictions, proposals)
            losses.update({f"{k}_stage{stage}": v for k, v in stage_losses.items()})
            if stage < self.num_cascade_stages - 1:
                prev_boxes = self.box_predictor[stage].predict_boxes(predictions, proposals)
        boxes = self._regress_for_gt_classes(self.box_predictor[-1], predictions, proposals)
        return losses, boxes, from_gt


def _maybe_checkpointed(fn, features: List[torch.Tensor], on: bool) -> torch.Tensor:
    """``fn(features)``, under activation checkpointing if ``on`` (non-reentrant, so that the
    refinement's parameters get their gradients; the feature maps are its inputs)."""
    if not on:
        return fn(features)
    return checkpoint(lambda *fs: fn(list(fs)), *features, use_reentrant=False)


def _split_boxes(boxes: List[Boxes], chunk: int) -> Iterator[List[Boxes]]:
    """The RoIs of all images, in order, ``chunk`` at a time: per chunk, one (maybe empty)
    :class:`Boxes` per image."""
    sizes = [len(b) for b in boxes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for s in range(0, sum(sizes), chunk):
        e = s + chunk
        yield [
            b[min(max(s - o, 0), n) : min(max(e - o, 0), n)]
            for b, o, n in zip(boxes, starts, sizes)
        ]


def _in_chunks(fn, boxes: List[Boxes], chunk: int) -> torch.Tensor:
    """``fn(boxes)`` for per-RoI ``fn`` (R RoIs in -> R rows out), computed ``chunk`` RoIs at a
    time into one preallocated output (0: all at once). Each chunk's intermediate tensors are
    freed before the next one runs, unless autograd keeps them."""
    total = sum(len(b) for b in boxes)
    if chunk <= 0 or total <= chunk:
        return fn(boxes)
    out, start = None, 0
    for part in _split_boxes(boxes, chunk):
        y = fn(part)
        if out is None:
            out = y.new_empty((total,) + tuple(y.shape[1:]))
        out[start : start + len(y)] = y
        start += len(y)
    return out


def _nonempty_after_clip(boxes: torch.Tensor, image_size) -> torch.Tensor:
    clipped = Boxes(boxes.detach().clone())
    clipped.clip(image_size)
    return clipped.nonempty()
