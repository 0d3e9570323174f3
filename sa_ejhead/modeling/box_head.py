"""The EJ-Head box head: Detectron2's conv/fc box head, loading 7x7 checkpoints into 14x14 heads,
and the learning-rate factor of its first fc (``lr_factor_func`` of Detectron2's
``get_default_optimizer_params``, defined beside the model it serves as ViTDet's
``get_vit_lr_decay_rate``): it keeps the step of the Enriched Feature's first fc at the size the
7x7 head takes (docs/design.md, "The Enriched Feature's first fc")."""

from typing import Sequence, Tuple

from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead


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


# The first fc of the box head (``FastRCNNConvFCHead`` / ``EJFastRCNNConvFCHead`` name it so).
ENRICHED_FC1 = ("roi_heads.box_head.fc1.",)


class ParamLRFactor:
    """``lr_factor_func`` that returns ``factor`` for the parameters whose full name starts with
    one of ``prefixes`` and 1.0 for all others. A class, not a ``functools.partial``, for a
    ``repr`` that is the same in every process (a config that holds it hashes the same).

    Examples::

        optimizer.params.lr_factor_func = ParamLRFactor(("roi_heads.box_head.fc1.",), 0.25)
    """

    def __init__(self, prefixes: Sequence[str], factor: float):
        if isinstance(prefixes, str):
            prefixes = (prefixes,)
        if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
            raise ValueError(f"prefixes must be non-empty strings, got {prefixes!r}")
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor!r}")
        self.prefixes: Tuple[str, ...] = tuple(prefixes)
        self.factor = float(factor)

    def __call__(self, name: str) -> float:
        # DistributedDataParallel wraps the model: its parameters are named "module.<name>"
        if name.startswith("module."):
            name = name[len("module.") :]
        return self.factor if name.startswith(self.prefixes) else 1.0

    def __repr__(self) -> str:
        return f"ParamLRFactor(prefixes={self.prefixes!r}, factor={self.factor!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ParamLRFactor) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


def enriched_fc1_lr_factor(
    pooled_size: int = 14, reference_size: int = 7, num_stages: int = 0
) -> ParamLRFactor:
    """The learning-rate factor ``(reference_size / pooled_size) ** 2`` of the box head's first
    fc, into which a ``pooled_size`` RoI feature is flattened: the step a ``reference_size`` input
    takes, under SGD or Adam(W) (docs/design.md, "The Enriched Feature's first fc").

    Args:
        pooled_size (int): side of the box RoI feature flattened into fc1 (14 for EJ-Head).
        reference_size (int): side whose step to keep (7, Mask R-CNN's box head).
        num_stages (int): 0 for one box head; N for the N box heads of a cascade.
    """
    if pooled_size <= 0 or reference_size <= 0:
        raise ValueError(f"sizes must be positive, got {pooled_size}, {reference_size}")
    return ParamLRFactor(fc1_prefixes(num_stages), (reference_size / pooled_size) ** 2)


def fc1_prefixes(num_stages: int = 0) -> Tuple[str, ...]:
    """Names of the box head's first fc: ``roi_heads.box_head.fc1.`` (``num_stages=0``), or
    ``roi_heads.box_head.<k>.fc1.`` for each of the ``num_stages`` heads of a cascade."""
    if num_stages < 0:
        raise ValueError(f"num_stages must be >= 0, got {num_stages}")
    if not num_stages:
        return ENRICHED_FC1
    return tuple(f"roi_heads.box_head.{k}.fc1." for k in range(num_stages))
