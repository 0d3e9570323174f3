"""EJ-Head: Mask R-CNN ROI heads with Enriched Feature, shared Boundary Refinement and Interleaving.

See docs/design.md, EJ-Head. The heads install a :class:`RefinedROIPooler` (pooling, then the
shared refinement) as their box and mask poolers, so Detectron2's box, mask and cascade-stage
code runs unchanged on refined RoIs. The training ``forward`` is overridden only when
interleaving is on, because the re-matching needs all the ground truth of each image, which
``StandardROIHeads.forward`` does not hand to the mask branch.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from .poolers import RefinedROIPooler, check_count, use_threaded_roi_align
from .refinement import build_refinement

REFINEMENT_SCOPES = ("shared", "box")

# The objectness logit Detectron2's add_ground_truth_to_proposals gives the GT boxes it appends
# (P(object) = 1 - 1e-10); together with exact box equality it marks an appended GT proposal.
_GT_PROPOSAL_LOGIT = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


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
        threaded_pooling: bool = False,
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
            box_refinement_downsample (int): 1 (faithful) refines the box RoIs at the box
                pooler's resolution; k > 1 average-pools them by k first (14x14 -> 7x7 for k=2;
                the box head then takes the smaller input). Mask RoIs are never downsampled.
                With a fixed sampling ratio s of the box pooler this equals a box pooler at the
                resolution / k with ratio k * s (docs/design.md, "Costs and the
                efficient setting"), which configs state directly (the efficient model); this lever is
                for the adaptive ratio (s = 0), which has no such equivalent.
            interleave (bool): train the mask branch on the regressed boxes.
            interleave_append_gt (bool): re-append the GT boxes to the interleaved positives.
            interleave_iou_threshold (float): IoU for a regressed box to be a positive.
            interleave_max_positives (int): at most this many mask positives per image.
            threaded_pooling (bool): speed only: on the CPU, split the RoIAlign of the box/mask
                poolers, and its backward in training, over the torch threads
                (:class:`ThreadedROIAlign`; the same output and gradient).
            threaded_inference_pooling (bool): with ``threaded_pooling``, False splits only
                the pooling that autograd records (training) and pools in one call at
                inference: less peak memory, more latency (``ThreadedROIAlign``'s
                ``threaded_inference``).
            box_inference_chunk (int): memory only: the box poolers' ``inference_chunk``
                (:class:`RefinedROIPooler`), box RoIs refined at a time at inference.
            checkpoint_refinement (bool): memory only: the box and mask poolers' ``checkpoint``
                (:class:`RefinedROIPooler`), activation checkpointing in training.
            checkpoint_chunk (int): memory only: the poolers' ``checkpoint_chunk``.
            kwargs: the arguments of :class:`StandardROIHeads` (or :class:`CascadeROIHeads`).
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
        self.interleave = interleave
        self.interleave_append_gt = interleave_append_gt
        self.interleave_max_positives = interleave_max_positives
        self.interleave_matcher = Matcher(
            [interleave_iou_threshold], [0, 1], allow_low_quality_matches=False
        )
        if threaded_pooling:
            for name in ("box_pooler", "mask_pooler", "keypoint_pooler"):
                if getattr(self, name, None) is not None:
                    use_threaded_roi_align(
                        getattr(self, name), threaded_inference=threaded_inference_pooling
                    )
        check_count("box_refinement_downsample", box_refinement_downsample, 1)
        check_count("box_inference_chunk", box_inference_chunk, 0)
        checkpointing = dict(checkpoint=checkpoint_refinement, checkpoint_chunk=checkpoint_chunk)
        self.box_pooler = RefinedROIPooler(
            self.box_pooler,
            refinement,
            downsample=box_refinement_downsample,
            inference_chunk=box_inference_chunk,
            **checkpointing,
        )
        if self.mask_on and self.mask_pooler is not None:
            shared = refinement if refinement_scope == "shared" else None
            self.mask_pooler = RefinedROIPooler(self.mask_pooler, shared, **checkpointing)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ej = cfg.MODEL.EJ_HEAD
        channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
        ret.update(
            refinement=build_refinement(cfg, channels),
            refinement_scope=ej.REFINEMENT_SCOPE,
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

    @property
    def _interleave_on(self) -> bool:
        return self.interleave and self.mask_on

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
        # the mask head trains on foreground instances: every interleaved one is
        losses.update(self._forward_mask(features, mask_instances))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

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
       14x14 inputs (:class:`EJFastRCNNConvFCHead`);
    2. Boundary Refinement: ``refinement`` (a :class:`BoundaryRefinement` or None) right after the
       RoIAlign, shared by the box and the mask RoIs (``refinement_scope="shared"``) or applied
       to the box RoIs only (``"box"``): the :class:`RefinedROIPooler` installed as the box
       and mask poolers;
    3. Interleaving (``interleave``, training only): the mask branch trains on the box branch's
       regressed boxes re-matched to the GT.

    With ``refinement=None``, ``interleave=False``, ``box_refinement_downsample=1`` and a 7x7
    pooler it is exactly ``StandardROIHeads``. Inference is Mask R-CNN's: masks are predicted on
    the post-NMS boxes (refined by the shared refinement). Arguments: those of
    ``_EJHeadMixin.__init__``, and of :class:`StandardROIHeads` for the rest.
    """

    def _forward_box_interleaved(self, features, proposals, targets):
        """
        Box losses on the sampled proposals, plus the regressed boxes for interleaving.

        Returns:
            dict[str, Tensor]: the box losses.
            list[Tensor]: per image, the regressed (detached) boxes of the sampled proposals.
            list[Tensor]: per image, bools marking the appended GT proposals.
        """
        features = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        predictions = self.box_predictor(self.box_head(box_features))
        losses = self.box_predictor.losses(predictions, proposals)
        boxes = self._regress_for_gt_classes(self.box_predictor, predictions, proposals)
        from_gt = [self._appended_gt_flags(p, t) for p, t in zip(proposals, targets)]
        return losses, boxes, from_gt


@ROI_HEADS_REGISTRY.register()
class EJCascadeROIHeads(_EJHeadMixin, CascadeROIHeads):
    """
    EJ-Head on Cascade R-CNN: every stage pools 14x14 and refines with the (one, shared)
    refinement, through the same :class:`RefinedROIPooler` as :class:`EJROIHeads` (so it sees
    the average of the stage losses, as the features do, while each stage's head sees its own
    loss); with interleaving the mask branch trains on the last stage's regressed boxes,
    re-matched to the GT at ``interleave_iou_threshold``.

    Arguments: those of :class:`EJROIHeads`, and of :class:`CascadeROIHeads` for the rest.
    """

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


def _nonempty_after_clip(boxes: torch.Tensor, image_size) -> torch.Tensor:
    clipped = Boxes(boxes.detach().clone())
    clipped.clip(image_size)
    return clipped.nonempty()
