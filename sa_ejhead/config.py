"""yacs config keys of sa-ejhead.

Detectron2's ``DefaultTrainer`` and ``tools/train_net.py`` use yacs configs; call
:func:`add_sa_ejhead_config` on ``get_cfg()`` before merging one of our YAML files. LazyConfig users
don't need this: our modules take explicit keyword arguments.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_sa_ejhead_config"]


def add_sa_ejhead_config(cfg):
    """Add the SA-FPN and EJ-Head keys (with the paper's defaults) to a ``get_cfg()`` config, in
    place; return it."""
    # SA-FPN (docs/design.md, SA-FPN). IN_FEATURES / OUT_CHANNELS / NORM / FUSE_TYPE are read from
    # MODEL.FPN, exactly as Detectron2's build_resnet_fpn_backbone does.
    cfg.MODEL.SAFPN = CN()
    # "td" | "bu" | "buf" | "td+buf" | "sa" | "pa"
    cfg.MODEL.SAFPN.MODE = "sa"
    # "conv" (3x3 stride 2) | "maxpool"
    cfg.MODEL.SAFPN.DOWNSAMPLE = "conv"
    cfg.MODEL.SAFPN.SQUARE_PAD = 0
    # Efficiency levers (defaults = faithful; "td+buf" / "sa" only; see docs/safpn.md):
    # the BUF pathway reuses the TD laterals
    cfg.MODEL.SAFPN.SHARE_LATERALS = False
    # "after" (merge the two pathways' outputs) | "before" (merge pre-output sums, one 3x3 conv)
    cfg.MODEL.SAFPN.FUSE_POSITION = "after"
    # finest levels that output TD alone, a prefix such as ["p2"]; [] = every level fused
    cfg.MODEL.SAFPN.TD_ONLY_LEVELS = []

    # EJ-Head (docs/design.md, EJ-Head). The "Enriched Feature" switch is the box pooler resolution:
    # MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14.
    cfg.MODEL.EJ_HEAD = CN()
    cfg.MODEL.EJ_HEAD.INTERLEAVE = True
    cfg.MODEL.EJ_HEAD.INTERLEAVE_APPEND_GT = True
    cfg.MODEL.EJ_HEAD.INTERLEAVE_IOU_THRESHOLD = 0.5
    cfg.MODEL.EJ_HEAD.INTERLEAVE_MAX_POSITIVES = 128
    # "none" | "conv1" | "conv2" | "conv3" | "residual"
    cfg.MODEL.EJ_HEAD.REFINEMENT = "residual"
    # "shared" (box and mask RoIs) | "box"
    cfg.MODEL.EJ_HEAD.REFINEMENT_SCOPE = "shared"
    # "flatten" (faithful) | "avgpool" | "stride2conv"
    cfg.MODEL.EJ_HEAD.BOX_FC_INPUT = "flatten"
    # Efficiency levers (defaults = faithful; see docs/ejhead.md):
    # width of the residual branch of the refinement (1x1 reduce, two 3x3, 1x1 expand); 0 = the
    # faithful block on all channels
    cfg.MODEL.EJ_HEAD.REFINEMENT_CHANNELS = 0
    # average-pool the box RoIs by this factor before the refinement and the box head
    # (2: 14x14 -> 7x7); 1 = faithful. Mask RoIs are never downsampled. With a fixed
    # ROI_BOX_HEAD.POOLER_SAMPLING_RATIO s > 0 the box RoIs are pooled directly at 7x7 with ratio
    # 2s, which gives the same numbers (docs/design.md, "Exact downsampled box pooling").
    cfg.MODEL.EJ_HEAD.BOX_REFINEMENT_DOWNSAMPLE = 1
    # Speed only, same output and gradient: split the CPU RoIAlign of the box/mask poolers and
    # its backward over the torch threads (torchvision's CPU kernels use one; modeling/poolers.py).
    cfg.MODEL.EJ_HEAD.THREADED_POOLING = True
    # with THREADED_POOLING: False splits only the training pooling and its backward, and pools
    # in one call at inference (less peak memory, more latency)
    cfg.MODEL.EJ_HEAD.THREADED_INFERENCE_POOLING = True
    # memory only: box RoIs refined and classified this many at a time at inference (0: all at
    # once)
    cfg.MODEL.EJ_HEAD.BOX_INFERENCE_CHUNK = 256
    # memory only, same losses and gradients up to float summation order: in training, recompute
    # the RoI pooling and the refinement in the backward instead of keeping their activations
    cfg.MODEL.EJ_HEAD.CHECKPOINT_REFINEMENT = False
    # with CHECKPOINT_REFINEMENT: the checkpointed forward pools and refines the box and mask
    # RoIs this many at a time (0: all at once)
    cfg.MODEL.EJ_HEAD.CHECKPOINT_CHUNK = 256

    # Learning-rate factor of the box head's first fc (each stage's in a cascade), as Detectron2's
    # SOLVER.BIAS_LR_FACTOR: (7/14)^2 = 0.25 when 14x14 RoIs are flattened into it (the EJ-Head
    # YAMLs), 1.0 otherwise (docs/design.md, "The Enriched Feature's first fc").
    cfg.SOLVER.ENRICHED_FC1_LR_FACTOR = 1.0
    return cfg
