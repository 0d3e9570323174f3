"""The full SA-FPN + EJ-Head model traces with Detectron2's TracingAdapter on the CPU."""

import torch
from torch import nn

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.export import TracingAdapter
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import ResNet
from detectron2.utils.testing import assert_instances_allclose

CH = 32  # neck channels of the small test model


def _small_safpn_ejhead():
    """The LazyConfig model of mask_rcnn_safpn_ejhead.py, shrunk to a ResNet-18, 32-channel
    neck, small heads and 50 test proposals (structure unchanged: SA-FPN, 14x14 box RoIs, shared
    residual refinement, interleaving)."""
    model = LazyConfig.load("configs/common/models/mask_rcnn_safpn_ejhead.py").model
    model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="FrozenBN")
    model.backbone.out_channels = CH
    model.proposal_generator.head.in_channels = CH
    model.proposal_generator.post_nms_topk = (100, 50)
    heads = model.roi_heads
    heads.num_classes = 3
    heads.refinement.channels = CH
    heads.box_head.input_shape = ShapeSpec(channels=CH, height=14, width=14)
    heads.box_head.fc_dims = [32, 32]
    heads.box_predictor.input_shape = ShapeSpec(channels=32)
    heads.mask_head.input_shape = ShapeSpec(channels=CH, height=14, width=14)
    heads.mask_head.conv_dims = [16, 16]
    torch.manual_seed(0)
    return instantiate(model).eval()


def _inference(model, image):
    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
    return model.inference(inputs, do_postprocess=True)[0]["instances"]


def test_trace_safpn_ejhead_matches_eager():
    model = _small_safpn_ejhead()
    assert type(model.backbone).__name__ == "SAFPN"
    assert type(model.roi_heads).__name__ == "EJROIHeads" and model.roi_heads.refinement is not None
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 96, 120, generator=g) * 255
    other = torch.rand(3, 80, 100, generator=g) * 255

    adapter = TracingAdapter(model, image, _inference)
    adapter.eval()
    with torch.no_grad():
        # trace with another image: the trace must generalise to new sizes and detection counts
        traced = torch.jit.trace(adapter, (other,), check_trace=False)
        eager = _inference(model, image)
        from_trace = adapter.outputs_schema(traced(image))
    assert len(eager) > 0 and eager.pred_masks.shape[1:] == (96, 120)
    assert_instances_allclose(eager, from_trace, size_as_tensor=True)


def test_traced_model_handles_no_detections():
    model = _small_safpn_ejhead()
    model.roi_heads.box_predictor.test_score_thresh = 1.01
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    adapter = TracingAdapter(model, image, _inference)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, (image,), check_trace=False)
        out = adapter.outputs_schema(traced(image))
    assert len(out) == 0 and tuple(out.pred_masks.shape) == (0, 64, 64)
    assert isinstance(traced, nn.Module)
