"""faster-coco-eval gives pycocotools' COCO AP (sa_ejhead.evaluation)."""

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import Boxes, BoxMode, Instances

from sa_ejhead.evaluation import fast_coco
from sa_ejhead.evaluation import (
    FASTER_COCO_EVAL_AVAILABLE,
    COCOEvaluator,
    FasterCOCOeval,
    get_cocoeval_class,
)
from sa_ejhead_lab.coco_eval import _uncompressed_rle, evaluate_coco_results, make_synthetic_coco

needs_faster = pytest.mark.skipif(
    not FASTER_COCO_EVAL_AVAILABLE, reason="faster-coco-eval is not installed"
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A ground-truth file and a results file (Detectron2's results format, RLE masks)."""
    gt, results = make_synthetic_coco(
        num_images=24, num_classes=3, max_objects=6, dets_per_image=15, image_size=(256, 320)
    )
    root = tmp_path_factory.mktemp("coco")
    gt_file, res_file = root / "gt.json", root / "results.json"
    gt_file.write_text(json.dumps(gt))
    res_file.write_text(json.dumps(results))
    return str(gt_file), str(res_file), gt, results


def test_synthetic_data_is_deterministic_and_varied():
    gt1, res1 = make_synthetic_coco(num_images=4, seed=3)
    gt2, res2 = make_synthetic_coco(num_images=4, seed=3)
    assert json.dumps(gt1) == json.dumps(gt2) and json.dumps(res1) == json.dumps(res2)
    kinds = {type(a["segmentation"]).__name__ for a in gt1["annotations"]}
    assert kinds == {"list", "dict"}  # polygons and uncompressed RLE
    assert all(isinstance(r["segmentation"]["counts"], str) for r in res1)


def test_uncompressed_rle_round_trip():
    rng = np.random.RandomState(0)
    for first in (0, 1):
        binary = (rng.rand(7, 9) > 0.5).astype(np.uint8)
        binary[0, 0] = first
        rle = _uncompressed_rle(binary)
        decoded = mask_util.decode(mask_util.frPyObjects(rle, 7, 9))
        np.testing.assert_array_equal(decoded, binary)


@needs_faster
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_matches_pycocotools_on_results_file(synthetic, iou_type):
    gt_file, res_file, _, _ = synthetic
    reference = evaluate_coco_results(gt_file, res_file, iou_type, use_fast_impl=False)
    fast = evaluate_coco_results(gt_file, res_file, iou_type, use_fast_impl=True)
    assert len(reference) == len(fast) == 12
    assert reference[0] > 0.05  # a meaningful AP, not an empty evaluation
    assert min(reference[3:6]) >= 0  # AP_S, AP_M and AP_L are all defined
    np.testing.assert_allclose(fast, reference, atol=1e-4, rtol=0)


def test_cocoeval_class_selection():
    assert get_cocoeval_class(use_fast_impl=False) is PyCOCOeval
    expected = FasterCOCOeval if FASTER_COCO_EVAL_AVAILABLE else PyCOCOeval
    assert get_cocoeval_class(use_fast_impl=True) is expected


def _register(name, gt_file):
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, gt_file, "")
    DatasetCatalog.get(name)  # loading sets the metadata's category-id mapping, as test loaders do
    return name


def _predictions(gt, results):
    """Turn COCO results back into the model outputs COCOEvaluator.process() receives."""
    height, width = gt["images"][0]["height"], gt["images"][0]["width"]
    inputs, outputs = [], []
    for image in gt["images"]:
        dets = [r for r in results if r["image_id"] == image["id"]]
        inst = Instances((height, width))
        boxes = np.array([r["bbox"] for r in dets], dtype=np.float32).reshape(-1, 4)
        boxes = BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
        inst.pred_boxes = Boxes(torch.as_tensor(boxes))
        inst.scores = torch.tensor([r["score"] for r in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([r["category_id"] - 1 for r in dets], dtype=torch.int64)
        masks = [mask_util.decode(r["segmentation"]) for r in dets]
        inst.pred_masks = torch.as_tensor(np.stack(masks)).bool()
        inputs.append({"image_id": image["id"]})
        outputs.append({"instances": inst})
    return inputs, outputs


@needs_faster
def test_evaluator_fast_and_official_agree(synthetic, tmp_path, monkeypatch):
    gt_file, _, gt, results = synthetic
    name = _register("sa_ejhead_test_fast_coco", gt_file)
    inputs, outputs = _predictions(gt, results)
    used = []  # the iou types that faster-coco-eval evaluated

    class Recording(FasterCOCOeval):
        def __init__(self, coco_gt, coco_dt, iou_type):
            used.append(iou_type)
            super().__init__(coco_gt, coco_dt, iou_type)

    monkeypatch.setattr(fast_coco, "FasterCOCOeval", Recording)
    metrics = {}
    for fast in (True, False):
        evaluator = COCOEvaluator(
            name, distributed=False, output_dir=str(tmp_path), use_fast_impl=fast
        )
        assert evaluator._use_fast_impl is fast
        evaluator.reset()
        evaluator.process(inputs, outputs)
        metrics[fast] = evaluator.evaluate()
    assert set(metrics[True]) == {"bbox", "segm"} and used == ["bbox", "segm"]  # fast=True only
    assert metrics[False]["bbox"]["AP"] > 5.0
    for task in ("bbox", "segm"):
        assert metrics[True][task].keys() == metrics[False][task].keys()
        for key, value in metrics[False][task].items():
            assert metrics[True][task][key] == pytest.approx(value, abs=1e-2, nan_ok=True), key
    assert (tmp_path / "coco_instances_results.json").exists()
    assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
