# Helper of the diag_*.py configs (not a row): the change the diagnostics of docs/ablation.md
# test first, RoI level assignment at COCO's canonical size 224 instead of the v1 rows' 36.
CANONICAL_BOX_SIZE = 224


def coco_level_assignment(roi_heads):
    """Assign RoIs to pyramid levels as on COCO (canonical box size 224 at level 4)."""
    roi_heads.box_pooler.canonical_box_size = CANONICAL_BOX_SIZE
    roi_heads.mask_pooler.canonical_box_size = CANONICAL_BOX_SIZE
