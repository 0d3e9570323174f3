"""Export a Detectron2 R-CNN (SA-FPN + EJ-Head or any ``GeneralizedRCNN``) by tracing
Detectron2's :class:`~detectron2.export.TracingAdapter` around
``model.inference(..., do_postprocess=False)`` once, on a sample image, into TorchScript or ONNX.
The graph's inputs, outputs and ops, and what stays out of it: docs/deploy.md and the metadata.
"""

import importlib
import json
import logging
import os
import platform
import warnings
from typing import Dict, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

# RoiAlign's coordinate_transformation_mode ("half_pixel" = aligned=True) is in ONNX from opset 16;
# Detectron2's STABLE_ONNX_OPSET_VERSION (11) would silently drop the half-pixel shift.
MIN_OPSET = 16
DEFAULT_OPSET = 17
_SUFFIXES = {"torchscript": "ts", "onnx": "onnx"}

# The meaning of each output of the exported graph (written into the metadata file).
_OUTPUT_DOCS = {
    "pred_boxes": ("float32", ["num_instances", 4], "x0, y0, x1, y1 in input-image pixels"),
    "pred_classes": ("int64", ["num_instances"], "class index, 0..num_classes-1"),
    "pred_masks": (
        "float32",
        ["num_instances", 1, "M", "M"],
        "mask probability (sigmoid) of the predicted class on an M x M grid over the box; "
        "paste into the image (sa_ejhead.export.runtime) and threshold at 0.5",
    ),
    "scores": ("float32", ["num_instances"], "detection score"),
    "image_size": ("int64", [2], "(height, width) of the input image"),
}


def _inference(model, image: torch.Tensor):
    """The traced function: one 3 x H x W image in, the detector's Instances at the input size
    out (``pred_masks`` as M x M probabilities)."""
    return model.inference([{"image": image}], do_postprocess=False)[0]


def metadata_path(model_path: str) -> str:
    """The metadata file beside an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    return model_path + ".json"


def _library_versions() -> Dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "detectron2", "sa_ejhead", "onnx", "onnxruntime"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    return versions


def _check_model(model):
    from detectron2.modeling import GeneralizedRCNN

    if not isinstance(model, GeneralizedRCNN):
        raise TypeError(
            f"export_model traces GeneralizedRCNN models (Mask/Faster R-CNN with any backbone "
            f"and ROI heads); got {type(model).__name__}"
        )
    if model.training:
        raise ValueError("Put the model in eval mode (model.eval()) before exporting it")


def _test_postprocess_settings(model) -> Dict:
    """The constants that tracing bakes into the graph (they cannot change after export)."""
    predictor = model.roi_heads.box_predictor
    if isinstance(predictor, torch.nn.ModuleList):  # cascade: the last stage's settings
        predictor = predictor[-1]
    rpn = model.proposal_generator
    return {
        "score_thresh": float(predictor.test_score_thresh),
        "nms_thresh": float(predictor.test_nms_thresh),
        "detections_per_image": int(predictor.test_topk_per_image),
        "rpn_pre_nms_topk": int(rpn.pre_nms_topk[False]),
        "rpn_post_nms_topk": int(rpn.post_nms_topk[False]),
        "rpn_nms_thresh": float(rpn.nms_thresh),
        "mask_threshold": 0.5,
    }


def _export_onnx(adapter, image, path, names, opset):
    import onnx

    dynamic_axes = {"image": {1: "height", 2: "width"}}
    dynamic_axes.update({name: {0: "num_instances"} for name in names if name != "image_size"})
    torch.onnx.export(
        adapter,
        (image,),
        path,
        dynamo=False,  # the TorchScript-based exporter: TracingAdapter, torchvision symbolics
        opset_version=opset,
        input_names=["image"],
        output_names=names,
        dynamic_axes=dynamic_axes,
        do_constant_folding=True,
    )
    onnx.checker.check_model(path)


def export_model(
    model,
    image: torch.Tensor,
    output_dir: str,
    format: str = "onnx",
    *,
    opset: int = DEFAULT_OPSET,
    resize: Optional[Dict] = None,
    extra_metadata: Optional[Dict] = None,
) -> Tuple[str, Dict]:
    """Trace ``model`` on ``image`` and write the exported model and its metadata file.

    Args:
        model (GeneralizedRCNN): on the CPU, in eval mode, with its weights.
        image (Tensor): 3 x H x W sample image in the model's input format, resized as the
            model's test-time resize does (the graph is dynamic in H and W, but the trace runs
            this image once: use a realistic one).
        format (str): "torchscript" (``model.ts``) or "onnx" (``model.onnx``).
        opset (int): ONNX opset, at least :data:`MIN_OPSET`.
        resize (dict or None): the test-time resize the caller must apply before the model;
            recorded in the metadata.
        extra_metadata (dict or None): merged into the metadata (e.g. the config file).

    Returns:
        tuple[str, dict]: the exported file and its metadata (also written to ``<file>.json``).
    """
    from detectron2.export import TracingAdapter

    _check_model(model)
    if format == "onnx" and opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} < {MIN_OPSET}: ONNX RoiAlign has no half-pixel (aligned=True) mode "
            f"before opset {MIN_OPSET}, so the exported masks and boxes would be shifted"
        )
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"Expected a 3 x H x W image, got shape {tuple(image.shape)}")
    if format not in _SUFFIXES:
        raise ValueError(f"Unknown export format {format!r}; expected one of {list(_SUFFIXES)}")
    image = image.float().cpu()
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"model.{_SUFFIXES[format]}")

    adapter = TracingAdapter(model, image, _inference).eval()
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings on Python values recorded as constants; the shape-dependent ones take
        # Detectron2's tracing-aware paths (tests/test_deploy.py runs other sizes).
        warnings.simplefilter("ignore")
        sample_outputs = adapter(image)  # also fills adapter.outputs_schema
        # Instances flatten to their fields in sorted order, then the image size
        names = list(adapter.outputs_schema.keys) + ["image_size"]
        if format == "torchscript":
            torch.jit.save(torch.jit.trace(adapter, (image,), check_trace=False), path)
        else:
            _export_onnx(adapter, image, path, names, opset)

    height, width = image.shape[1:]
    metadata = {
        "format": format,
        "file": os.path.basename(path),
        "export_method": "tracing (detectron2.export.TracingAdapter)",
        "model": type(model).__name__,
        "backbone": type(model.backbone).__name__,
        "roi_heads": type(model.roi_heads).__name__,
        "opset": opset if format == "onnx" else None,
        "inputs": [
            {
                "name": "image",
                "dtype": "float32",
                "shape": [3, "height", "width"],
                "channel_order": model.input_format,
                "value_range": "0..255, not normalised (pixel_mean/pixel_std are in the graph)",
            }
        ],
        "outputs": [
            (
                dict(zip(("name", "dtype", "shape", "meaning"), (n,) + _OUTPUT_DOCS[n]))
                if n in _OUTPUT_DOCS
                else {"name": n}
            )
            for n in names
        ],
        "size_policy": {
            "dynamic_height_width": True,
            "traced_on": [int(height), int(width)],
            "resize_before_model": resize,
            "size_divisibility": int(model.backbone.size_divisibility),
            "note": "any H x W runs; the caller resizes as the config's test-time resize (the "
            "model was trained at those sizes) and rescales the outputs to the original image",
        },
        "postprocess": _test_postprocess_settings(model),
        "mask_paste": "not in the graph: sa_ejhead.export.ExportedModel (Detectron2's "
        "detector_postprocess)",
        "versions": _library_versions(),
    }
    if "pred_masks" in names:
        metadata["mask_resolution"] = int(sample_outputs[names.index("pred_masks")].shape[-1])
    metadata.update(extra_metadata or {})
    with open(metadata_path(path), "w") as f:
        json.dump(metadata, f, indent=2)
    logger.info("Exported %s (%s, outputs %s)", path, format, names)
    return path, metadata
