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
# EJ-Head (Enriched 14x14 RoIAlign, shared residual Boundary Refinement and Interleaving kept):
#   refinement.bottleneck_channels=64  the residual branch runs on 64 channels
#                           (1x1 256->64, two 3x3 64->64, 1x1 64->256, shortcut);
#   box_refinement_downsample=2        box RoIs at 7x7 for the refinement and the fc input (12.8 M
#                           first-fc weights instead of 51.4 M); mask RoIs are refined at 14x14;
#   box_pooler.sampling_ratio=1        with a fixed ratio the 2x2 average of the 14x14 RoIAlign is
#                           exactly a 7x7 RoIAlign at ratio 2, so the head pools 7x7 directly and
#                           never builds the 14x14 tensor (docs/design.md, "Exact downsampled box
#                           pooling"). Detectron2's adaptive ratio (0) has no such shortcut; its
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
#   threaded_inference_pooling=False   memory for latency: the RoIAlign is split over the CPU
#                           threads in training (forward and backward) but is one call at
#                           inference, as in Detectron2; the threads' allocations at inference
#                           raised the peak RSS by about 80 MiB on average on 2 cores.
from detectron2.layers import ShapeSpec

from .mask_rcnn_safpn_ejhead import model

model.backbone.update(share_laterals=True, fuse_position="before", td_only_levels=["p2"])

model.roi_heads.refinement.bottleneck_channels = 64
model.roi_heads.box_refinement_downsample = 2
model.roi_heads.box_head.input_shape = ShapeSpec(channels=256, height=7, width=7)
model.roi_heads.box_pooler.sampling_ratio = 1
model.roi_heads.checkpoint_refinement = True
model.roi_heads.checkpoint_chunk = 128
model.roi_heads.threaded_inference_pooling = False
