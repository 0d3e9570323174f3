"""COCO 2017 data as the paper trains it (Sec. 4.2).

"The input shape of images are resized to 1333 and 800 for training and testing": a fixed shorter
side of 800 and a longer side of at most 1333 (mmdetection's ``img_scale=(1333, 800)``), plus a
horizontal flip, instead of Detectron2's multi-scale (640..800) training. 16 images per iteration
(8 GPUs x 2 images for ResNet-50, 16 x 1 for ResNet-101 in the paper). Test on ``coco_2017_val``.

Detectron2's ``common/data/coco.py`` with our classes swapped in (same arguments):
``CheckedDatasetMapper`` names the file of a missing or corrupt image, and ``COCOEvaluator``
evaluates with faster-coco-eval; its ``dataset_name`` still follows ``dataloader.test``.
"""

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from sa_ejhead.data import CheckedDatasetMapper
from sa_ejhead.evaluation import COCOEvaluator

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.update(_target_=CheckedDatasetMapper)
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 16
dataloader.test.mapper.update(_target_=CheckedDatasetMapper)
dataloader.evaluator.update(_target_=COCOEvaluator)  # dataset_name="${..test.dataset.names}"
