"""Run a model exported by :func:`sa_ejhead.export.export_model`: TorchScript or onnxruntime.

:class:`ExportedModel` behaves like the Detectron2 model it came from in inference (boxes in the
original image, masks pasted at its size), so ``inference_on_dataset`` evaluates it. The paste
step is outside the graph (docs/deploy.md): Detectron2's ``detector_postprocess`` in
:class:`ExportedModel`, or :func:`postprocess_numpy` / :func:`paste_masks_numpy` with NumPy only,
for a deployment without torch.
"""

import json
from typing import Dict, List, Optional

import numpy as np
import torch

from .tracing import EXPORT_FORMATS, metadata_path

__all__ = ["ExportedModel", "postprocess_numpy", "paste_masks_numpy", "onnxruntime_session"]


def onnxruntime_session(path: str, num_threads: Optional[int] = None):
    """An onnxruntime ``InferenceSession`` of ``path`` on the CPU execution provider, with
    ``num_threads`` intra-op threads (None: ``torch.get_num_threads()``, so that eager,
    TorchScript and onnxruntime compare at the same thread count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(num_threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class ExportedModel:
    """An exported SA-FPN / EJ-Head (or any R-CNN) model with Detectron2's inference interface.

    Args:
        path (str): ``model.ts`` or ``model.onnx`` written by :func:`export_model` (its
            metadata file ``<path>.json`` must be beside it).
        num_threads (int or None): onnxruntime intra-op threads (see
            :func:`onnxruntime_session`); TorchScript uses torch's threads.
    """

    def __init__(self, path: str, num_threads: Optional[int] = None):
        with open(metadata_path(path)) as f:
            self.metadata = json.load(f)
        self.path = path
        self.format = self.metadata["format"]
        if self.format not in EXPORT_FORMATS:
            raise ValueError(f"{path}: unknown format {self.format!r} in its metadata")
        self.output_names = [o["name"] for o in self.metadata["outputs"]]
        if self.format == "torchscript":
            import torchvision  # noqa: F401  (registers the torchvision::roi_align / nms ops)

            self._module = torch.jit.load(path, map_location="cpu").eval()
            self._session = None
        else:
            self._module = None
            self._session = onnxruntime_session(path, num_threads)

    def run(self, image) -> Dict[str, torch.Tensor]:
        """The graph's outputs by name on one 3 x H x W image (Tensor or ndarray, the model's
        input format, 0..255)."""
        if self._session is not None:
            if isinstance(image, torch.Tensor):
                image = image.numpy()
            feed = {"image": np.ascontiguousarray(image, dtype=np.float32)}
            outputs = [torch.from_numpy(x) for x in self._session.run(self.output_names, feed)]
        else:
            image = torch.as_tensor(image).float()
            with torch.no_grad():
                outputs = self._module(image)
        return dict(zip(self.output_names, outputs))

    def inference(self, image):
        """Like ``GeneralizedRCNN.inference(..., do_postprocess=False)`` for one image: Instances
        at the input size, ``pred_masks`` as N x 1 x M x M probabilities."""
        from detectron2.structures import Boxes, Instances

        outputs = self.run(image)
        height, width = (int(x) for x in outputs.pop("image_size"))
        instances = Instances((height, width))
        for name, value in outputs.items():
            instances.set(name, Boxes(value) if name == "pred_boxes" else value)
        return instances

    def __call__(self, batched_inputs: List[Dict]) -> List[Dict]:
        """Detectron2's model interface: rescale to each input's ``height`` x ``width`` (default:
        the image's) and paste the masks; ``[{"instances": Instances}]`` per image."""
        from detectron2.modeling.postprocessing import detector_postprocess

        results = []
        for inputs in batched_inputs:
            image = inputs["image"]
            instances = self.inference(image)
            height = inputs.get("height", image.shape[-2])
            width = inputs.get("width", image.shape[-1])
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results

    def __repr__(self):
        return f"ExportedModel({self.path!r}, format={self.format!r})"


def _interpolation_matrix(start, stop, lo, hi, size):
    """Bilinear weights, (stop - start) x size float32 (zero padding, ``align_corners=False``),
    that sample a ``size``-long grid spanning ``[lo, hi]`` at the pixel centres
    ``start + 0.5 ... stop - 0.5``."""
    centres = np.arange(start, stop, dtype=np.float32) + np.float32(0.5)
    # grid_sample's unnormalisation of (centre - lo) / (hi - lo) * 2 - 1, align_corners=False
    normalised = (centres - np.float32(lo)) / np.float32(hi - lo) * 2 - 1
    source = ((normalised + 1) * size - 1) / 2
    left = np.floor(source)
    frac = (source - left).astype(np.float32)
    left = left.astype(np.int64)
    weights = np.zeros((len(centres), size), dtype=np.float32)
    rows = np.arange(len(centres))
    for offset, w in ((0, 1 - frac), (1, frac)):
        cols = left + offset
        inside = (cols >= 0) & (cols < size)
        weights[rows[inside], cols[inside]] += w[inside]
    return weights


def paste_masks_numpy(masks, boxes, height: int, width: int, threshold: float = 0.5):
    """Paste N x M x M (or N x 1 x M x M) mask probabilities into their N x 4 xyxy boxes of a
    ``height`` x ``width`` image, as Detectron2's ``paste_masks_in_image`` does on the CPU, with
    NumPy only; a pixel is in a mask when its sampled probability is >= ``threshold``.

    Returns:
        ndarray: N x height x width bool.
    """
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim == 4:
        masks = masks[:, 0]
    boxes = np.asarray(boxes, dtype=np.float32)
    out = np.zeros((len(masks), height, width), dtype=bool)
    size_y, size_x = masks.shape[1:]
    for i, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes)):
        # only the box (+1 pixel) can reach the threshold: the region Detectron2 pastes on CPU
        left, top = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
        right, bottom = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
        if right <= left or bottom <= top:
            continue
        rows = _interpolation_matrix(top, bottom, y0, y1, size_y)  # h x M
        cols = _interpolation_matrix(left, right, x0, x1, size_x)  # w x M
        out[i, top:bottom, left:right] = rows @ mask @ cols.T >= threshold
    return out


def postprocess_numpy(outputs: Dict, output_height: int, output_width: int, threshold=0.5):
    """Rescale an exported model's outputs (name -> ndarray) to the original image size and
    paste the masks, with NumPy only (Detectron2's ``detector_postprocess`` without torch).

    Returns:
        dict[str, ndarray]: ``boxes`` (N x 4, original pixels), ``scores``, ``classes`` and
        ``masks`` (N x output_height x output_width bool); boxes empty after clipping are
        dropped, as Detectron2 does.
    """
    in_height, in_width = (int(x) for x in np.asarray(outputs["image_size"]))
    boxes = np.asarray(outputs["pred_boxes"], dtype=np.float32).copy()
    boxes *= np.array([output_width / in_width, output_height / in_height] * 2, dtype=np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, output_width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, output_height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    result = {
        "boxes": boxes[keep],
        "scores": np.asarray(outputs["scores"])[keep],
        "classes": np.asarray(outputs["pred_classes"])[keep],
    }
    if "pred_masks" in outputs:
        masks = np.asarray(outputs["pred_masks"])[keep]
        result["masks"] = paste_masks_numpy(
            masks, result["boxes"], output_height, output_width, threshold
        )
    return result
