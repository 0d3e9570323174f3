# Cascade Mask R-CNN + SA-FPN + EJ-Head (paper Table 2, last row): Detectron2's
# common/models/cascade_rcnn.py (3 stages, IoU 0.5/0.6/0.7, class-agnostic regression) with the
# SA-FPN neck and EJCascadeROIHeads: every stage pools 14x14 RoIs refined by the one shared
# Boundary Refinement; interleaving trains the mask branch on the last stage's regressed boxes
# re-matched at IoU 0.5. Switches, levers and box head are mask_rcnn_ejhead.py's (each stage's box
# head takes the refined 14x14 feature).
import copy

from detectron2.model_zoo import get_config

from sa_ejhead.modeling import EJCascadeROIHeads

from .mask_rcnn_ejhead import EJ_HEAD_ARGUMENTS, model as _ejhead_model
from .mask_rcnn_safpn import model


def ej_cascade_roi_heads(roi_heads, ej_roi_heads):
    """Turn ``roi_heads``, a CascadeROIHeads config, into EJCascadeROIHeads with the EJ-Head of
    ``ej_roi_heads``, an EJROIHeads config: its ``EJ_HEAD_ARGUMENTS``, its box pooler's size and
    its box head in every stage. Returns ``roi_heads``."""
    roi_heads._target_ = EJCascadeROIHeads
    for key in EJ_HEAD_ARGUMENTS:
        roi_heads[key] = ej_roi_heads[key]
    roi_heads.box_pooler.output_size = ej_roi_heads.box_pooler.output_size
    roi_heads.box_heads = [copy.deepcopy(ej_roi_heads.box_head) for _ in roi_heads.box_heads]
    return roi_heads


model.roi_heads = ej_cascade_roi_heads(
    get_config("common/models/cascade_rcnn.py").model.roi_heads, _ejhead_model.roi_heads
)
