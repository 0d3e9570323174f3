"""The EJ-Head box head: Detectron2's conv/fc box head, loading 7x7 checkpoints into 14x14 heads."""

from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead

__all__ = ["EJFastRCNNConvFCHead"]


@ROI_BOX_HEAD_REGISTRY.register()
class EJFastRCNNConvFCHead(FastRCNNConvFCHead):
    """
    Detectron2's ``FastRCNNConvFCHead`` (same arguments, layers, init and checkpoint names) for
    the 14x14 RoI features of EJ-Head's "Enriched Feature", flattened into the first fc. It only
    loads checkpoints differently: a layer is loaded whole or not at all (see
    :meth:`_load_from_state_dict`).
    """

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Detectron2's checkpointer skips tensors one by one when their shapes differ: from a 7x7
        # checkpoint it would drop fc1's (256*7*7)-input weight but load its bias into our 14x14
        # fc1. Drop such an orphaned bias, so the layer is reported as new (missing) and keeps its
        # own init.
        for name, child in self.named_children():
            weight, bias = f"{prefix}{name}.weight", f"{prefix}{name}.bias"
            if getattr(child, "bias", None) is not None and bias in state_dict:
                if weight not in state_dict:
                    state_dict.pop(bias)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
