"""Run a model exported by :func:`sa_ejhead.export.export_model` (TorchScript or onnxruntime)
with Detectron2's model interface; the mask paste, outside the graph, is Detectron2's
``detector_postprocess`` (docs/deploy.md).
"""

import json
from typing import Dict, List, Optional

import numpy as np
import torch

from .tracing import metadata_path


def _onnxruntime_session(path: str, num_threads: Optional[int]):
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
        num_threads (int or None): onnxruntime intra-op threads (None: ``torch.get_num_threads()``,
            so that eager, TorchScript and onnxruntime compare at the same thread count);
            TorchScript uses torch's threads.
    """

    def __init__(self, path: str, num_threads: Optional[int] = None):
        with open(metadata_path(path)) as f:
            self.metadata = json.load(f)
        self.path = path
        self.format = self.metadata["format"]
        self.output_names = [o["name"] for o in self.metadata["outputs"]]
        if self.format == "torchscript":
            import torchvision  # noqa: F401  (registers the torchvision::roi_align / nms ops)

            self._module = torch.jit.load(path, map_location="cpu").eval()
        elif self.format == "onnx":
            self._session = _onnxruntime_session(path, num_threads)
        else:
            raise ValueError(f"{path}: unknown format {self.format!r} in its metadata")

    def __call__(self, batched_inputs: List[Dict]) -> List[Dict]:
        """Detectron2's model interface, one image (3 x H x W, the model's input format, 0..255)
        at a time: ``[{"instances": Instances}]``, rescaled to each input's ``height`` x
        ``width`` (default: the image's) and the masks pasted."""
        from detectron2.modeling.postprocessing import detector_postprocess
        from detectron2.structures import Boxes, Instances

        results = []
        for inputs in batched_inputs:
            image = torch.as_tensor(inputs["image"])
            if self.format == "onnx":
                feed = {"image": np.ascontiguousarray(image.numpy(), dtype=np.float32)}
                outputs = self._session.run(self.output_names, feed)
                outputs = [torch.from_numpy(x) for x in outputs]
            else:
                with torch.no_grad():
                    outputs = self._module(image.float())
            outputs = dict(zip(self.output_names, outputs))
            instances = Instances(tuple(int(x) for x in outputs.pop("image_size")))
            for name, value in outputs.items():
                instances.set(name, Boxes(value) if name == "pred_boxes" else value)
            height = inputs.get("height", image.shape[-2])
            width = inputs.get("width", image.shape[-1])
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results
