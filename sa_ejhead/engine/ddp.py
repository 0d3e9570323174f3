"""DistributedDataParallel for GPU and CPU (gloo) processes."""

from detectron2.engine import create_ddp_model as _d2_create_ddp_model

__all__ = ["create_ddp_model"]


def create_ddp_model(model, *, fp16_compression=False, **kwargs):
    """:func:`detectron2.engine.create_ddp_model`, except that a model on the CPU gets
    ``device_ids=None`` (PyTorch refuses device ids for CPU modules), so that Detectron2's
    ``launch`` with the gloo backend trains on CPU processes too."""
    params = list(model.parameters())
    if params and params[0].device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)
