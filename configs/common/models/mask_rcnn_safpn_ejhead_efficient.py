# Mask R-CNN + SA-FPN + EJ-Head, efficient setting (not in the paper; docs/design.md, Costs): the
# faithful model (mask_rcnn_safpn_ejhead.py) costs about twice the Mask R-CNN R50-FPN baseline in
# FLOPs, this one costs 1.09x its FLOPs; its CPU latency, training step and memory, measured with
# tools/benchmark.py, are in docs/benchmark.md. Every lever is spelled out; everything else is
# the faithful model.
#
# SA-FPN (the TD and BUF pathways are both kept and concatenated per level):
#   share_laterals=True     the BUF pathway reuses the TD laterals (no buf_lateral{i});
#   fuse_position="before"  concat + 1x1 fuse the two pathways' pre-output sums, then one 3x3
#                           output conv per level (the BUF 3x3 output convs are gone);
#   td_only_levels=["p2"]   p2 outputs the TD pathway alone (B2 still feeds the BUF pathway), so
#                           there is no 512->256 fuse at the 1/4 scale.
# EJ-Head (shared residual Boundary Refinement and Interleaving kept; the box RoIAlign samples as
# densely as the Enriched Feature's 14x14 at ratio 1, then the bins are 2x2 averages):
#   refinement.bottleneck_channels=64  the residual branch runs on 64 channels
#                           (1x1 256->64, two 3x3 64->64, 1x1 64->256, shortcut);
#   box_pooler 7x7 at sampling_ratio=2  box RoIs at 7x7 for the refinement and the fc input
#                           (12.8 M first-fc weights instead of 51.4 M); mask RoIs are refined at
#                           14x14. This is exactly the 2x2 average of a 14x14 RoIAlign at ratio 1
#                           (docs/design.md, "Costs and the efficient setting"), without the 14x14
#                           tensor. Detectron2's adaptive ratio (0) has no such 7x7 equivalent; its
#                           accuracy against ratio 1 is the ablation's table E (docs/ablation.md).
#   checkpoint_refinement=True         memory only (same losses and gradients up to float
#                           summation order): in training the RoI pooling and the refinement are
#                           recomputed in the backward instead of keeping the pooled RoIs and the
#                           refinement's inner maps;
#   checkpoint_chunk=128               memory only: the checkpointed training forward pools and
#                           refines the box and mask RoIs 128 at a time (256 by default), so the
#                           pooled RoIs and the refinement's transient maps stay small. At
#                           inference the box RoIs are refined box_inference_chunk=256 at a time
#                           (the default; docs/benchmark.md has both chunks' measurements);
# The CPU figures of docs/benchmark.md add the threaded RoIAlign (threaded_pooling=True, in training
# only: threaded_inference_pooling=False) on the command line; this config, like every model-zoo
# config, leaves it off.
from detectron2.layers import ShapeSpec

from .mask_rcnn_safpn_ejhead import model

model.backbone.update(share_laterals=True, fuse_position="before", td_only_levels=["p2"])

model.roi_heads.refinement.bottleneck_channels = 64
model.roi_heads.box_pooler.update(output_size=7, sampling_ratio=2)
model.roi_heads.box_head.input_shape = ShapeSpec(channels=256, height=7, width=7)
model.roi_heads.update(
    checkpoint_refinement=True,
    checkpoint_chunk=128,
)
