"""Tests of sa_ejhead.data: the SA-Shapes generator, registration, and validated COCO datasets."""

import contextlib
import copy
import io
import json
import os
import re

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, BoxMode
from detectron2.utils.events import EventStorage

import sa_ejhead  # noqa: F401  (registers sa_shapes_*)
from sa_ejhead import model_zoo
from sa_ejhead.data import (
    SA_SHAPES_DEFAULTS,
    CheckedDatasetMapper,
    DatasetFileNotFoundError,
    DatasetFormatError,
    DatasetImageError,
    default_sa_shapes_root,
    generate_sa_shapes,
    prepare_sa_shapes,
    register_coco_instances_checked,
    register_sa_shapes,
    size_counts,
    validate_coco_json,
)
from sa_ejhead.data import synthetic
from sa_ejhead.config import apply_lazy_overrides
from _helpers import tiny_yacs_config
from sa_ejhead.evaluation import COCOEvaluator

SMALL = dict(num_train=6, num_val=4, height=160, width=192, seed=3)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sas") / "tiny")
    info = generate_sa_shapes(root, **SMALL)
    return root, info


def _load(root, split):
    with open(os.path.join(root, "annotations", f"{split}.json")) as f:
        return json.load(f)


def _decode(segm, h, w):
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
    else:
        rle = dict(segm, counts=segm["counts"].encode("ascii"))
    return mask_util.decode(rle).astype(bool)


# ------------------------------------------------------------------------------------------------
# generator
# ------------------------------------------------------------------------------------------------
def test_generation_is_deterministic(tiny_set, tmp_path):
    root, info = tiny_set
    again = generate_sa_shapes(str(tmp_path / "again"), **SMALL)
    assert again == info
    for rel in [
        "annotations/train.json",
        "annotations/val.json",
        "train/000000.png",
        "val/000003.png",
    ]:
        with open(os.path.join(root, rel), "rb") as a, open(tmp_path / "again" / rel, "rb") as b:
            assert a.read() == b.read(), rel
    other = generate_sa_shapes(str(tmp_path / "other"), **{**SMALL, "seed": 4})
    assert other != info


def test_annotations_match_masks_and_images(tiny_set):
    root, info = tiny_set
    coco = _load(root, "train")
    assert validate_coco_json(os.path.join(root, "annotations/train.json"), root)["num_images"] == 6
    assert {c["name"] for c in coco["categories"]} == {
        "circle",
        "rectangle",
        "triangle",
        "star",
        "ring",
    }
    kinds = {"polygon": 0, "rle": 0}
    images = {im["id"]: im for im in coco["images"]}
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        h, w = im["height"], im["width"]
        m = _decode(ann["segmentation"], h, w)
        kinds["rle" if isinstance(ann["segmentation"], dict) else "polygon"] += 1
        assert m.sum() == ann["area"] > 0
        ys, xs = np.nonzero(m)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert kinds["polygon"] > 0 and kinds["rle"] > 0
    # the image is painted with the masks: the file has the declared size, 3 channels
    img = cv2.imread(os.path.join(root, coco["images"][0]["file_name"]))
    assert img.shape == (160, 192, 3)
    assert info["splits"]["train"]["annotations"] == len(coco["annotations"])


@pytest.mark.slow
def test_val_of_default_set_covers_all_scales(tmp_path):
    # Image i of a split depends only on (seed, split, i, size): this *is* the default val set.
    params = {**SA_SHAPES_DEFAULTS, "num_train": 0}
    info = generate_sa_shapes(str(tmp_path / "d"), **params)
    sizes = info["splits"]["val"]["sizes"]
    assert sizes == size_counts(_load(str(tmp_path / "d"), "val")["annotations"])
    assert min(sizes.values()) >= 20, sizes
    anns = _load(str(tmp_path / "d"), "val")["annotations"]
    sides = [max(a["bbox"][2], a["bbox"][3]) for a in anns]
    assert min(sides) < 10  # objects under 10 px ...
    h, w = params["height"], params["width"]
    assert max(a["area"] for a in anns) > 0.3 * h * w  # ... to a good part of the image
    # occlusion: some visible masks are smaller than the shape that was drawn (RLE masks)
    assert info["splits"]["val"]["rle"] > 0.2 * len(anns)


def test_generation_is_atomic_and_reused(tmp_path, monkeypatch):
    root = str(tmp_path / "atomic")
    calls = []

    def broken(folder, split, *args):
        calls.append(split)
        os.makedirs(os.path.join(folder, split))
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the generation

    monkeypatch.setattr(synthetic, "_write_split", broken)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_sa_shapes(root, **SMALL)
    assert calls == ["train"]
    assert os.listdir(tmp_path) == []  # neither the root nor a temporary folder is left
    monkeypatch.undo()

    info = synthetic.ensure_sa_shapes(root, **SMALL)
    stamp = os.stat(os.path.join(root, "info.json")).st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated a dataset that was already there")

    monkeypatch.setattr(synthetic, "generate_sa_shapes", must_not_run)
    assert synthetic.ensure_sa_shapes(root, **SMALL) == info
    assert os.stat(os.path.join(root, "info.json")).st_mtime_ns == stamp
    monkeypatch.undo()
    # other parameters: regenerated in place
    info2 = synthetic.ensure_sa_shapes(root, **{**SMALL, "num_val": 2})
    assert info2["splits"]["val"]["images"] == 2
    assert sorted(os.listdir(tmp_path)) == ["atomic"]
    with pytest.raises(FileExistsError, match="already exists"):
        generate_sa_shapes(root, **SMALL)


# ------------------------------------------------------------------------------------------------
# registration and mapping
# ------------------------------------------------------------------------------------------------
def test_builtin_registration(monkeypatch, tmp_path):
    assert "sa_shapes_train" in DatasetCatalog.list() and "sa_shapes_val" in DatasetCatalog.list()
    meta = MetadataCatalog.get("sa_shapes_val")
    assert meta.thing_classes == ["circle", "rectangle", "triangle", "star", "ring"]
    assert len(meta.thing_colors) == 5 and meta.evaluator_type == "coco"
    assert meta.json_file.endswith(os.path.join("annotations", "val.json"))
    monkeypatch.setenv("SA_SHAPES_ROOT", str(tmp_path / "elsewhere"))
    assert default_sa_shapes_root() == str(tmp_path / "elsewhere")
    monkeypatch.delenv("SA_SHAPES_ROOT")
    assert default_sa_shapes_root().endswith(os.path.join("datasets", "sa_shapes"))


def test_registered_set_is_generated_on_first_use_and_maps(tmp_path):
    root = str(tmp_path / "reg")
    names = register_sa_shapes(root, prefix="test_reg_shapes", **SMALL)
    try:
        assert not os.path.exists(root)  # registering does not generate
        dicts = DatasetCatalog.get("test_reg_shapes_train")
        assert os.path.isdir(root) and len(dicts) == 6
        assert prepare_sa_shapes(root, **SMALL)["splits"]["val"]["images"] == 4
        mapper = CheckedDatasetMapper(
            is_train=True,
            augmentations=[T.RandomFlip(horizontal=True)],
            image_format="BGR",
            use_instance_mask=True,
            instance_mask_format="bitmask",  # polygons and RLE in one set
        )
        d = dicts[0]
        out = mapper(copy.deepcopy(d))
        assert out["image"].shape == (3, 160, 192) and out["image"].dtype == torch.uint8
        inst = out["instances"]
        assert isinstance(inst.gt_masks, BitMasks) and len(inst) == len(d["annotations"])
        areas = sorted(int(a) for a in inst.gt_masks.tensor.sum((1, 2)))
        assert areas == sorted(
            (
                int(_decode(a["segmentation"], 160, 192).sum())
                if isinstance(a["segmentation"], list)
                else int(mask_util.area(a["segmentation"]))
            )
            for a in d["annotations"]
        )
    finally:
        for n in names:
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


@pytest.mark.slow
def test_perfect_predictions_score_100_on_every_scale(tmp_path):
    """The GT masks, boxes and areas are consistent with COCOeval: GT as predictions -> AP 100."""
    from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
    from pycocotools.coco import COCO

    root = str(tmp_path / "eval")
    generate_sa_shapes(root, num_train=0, num_val=24, height=192, width=256, seed=1)
    json_file = os.path.join(root, "annotations", "val.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
    preds = []
    for a in gt.dataset["annotations"]:
        rle = gt.annToRLE(a)
        if isinstance(rle["counts"], bytes):
            rle = dict(rle, counts=rle["counts"].decode("ascii"))
        p = {k: a[k] for k in ("image_id", "category_id", "bbox")}
        preds.append(dict(p, segmentation=rle, score=1.0))
    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            ev = _evaluate_predictions_on_coco(gt, copy.deepcopy(preds), iou_type)
        ap, ap_s, ap_m, ap_l = ev.stats[0], ev.stats[3], ev.stats[4], ev.stats[5]
        assert min(ap, ap_s, ap_m, ap_l) > 0.99, (iou_type, ev.stats[:6])


# ------------------------------------------------------------------------------------------------
# a user's COCO-format dataset
# ------------------------------------------------------------------------------------------------
def _user_dataset(tmp_path):
    """Three images: RGB with 2 objects, grayscale with 1, one without annotations.

    Category ids are 3 and 7 (non-contiguous).
    """
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    rgb = np.full((48, 64, 3), 90, np.uint8)
    rgb[5:25, 10:30] = (0, 0, 255)
    rgb[30:40, 40:60] = (0, 255, 0)
    cv2.imwrite(str(img_dir / "a.png"), rgb)
    gray = np.full((40, 50), 30, np.uint8)
    gray[10:30, 10:30] = 220
    cv2.imwrite(str(img_dir / "b.png"), gray)
    cv2.imwrite(str(img_dir / "c.png"), np.zeros((32, 32, 3), np.uint8))
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 48, "width": 64},
            {"id": 2, "file_name": "b.png", "height": 40, "width": 50},
            {"id": 5, "file_name": "c.png", "height": 32, "width": 32},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 3,
                "bbox": [10, 5, 20, 20],
                "area": 400,
                "iscrowd": 0,
                "segmentation": [[10, 5, 30, 5, 30, 25, 10, 25]],
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 7,
                "bbox": [40, 30, 20, 10],
                "area": 200,
                "iscrowd": 0,
                "segmentation": [[40, 30, 60, 30, 60, 40, 40, 40]],
            },
            {
                "id": 3,
                "image_id": 2,
                "category_id": 7,
                "bbox": [10, 10, 20, 20],
                "area": 400,
                "iscrowd": 0,
                "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
            },
        ],
        "categories": [{"id": 3, "name": "red"}, {"id": 7, "name": "green"}],
    }
    return coco, img_dir


def _write(tmp_path, coco, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return str(path)


def test_user_coco_dataset_works(tmp_path):
    coco, img_dir = _user_dataset(tmp_path)
    json_file = _write(tmp_path, coco)
    summary = register_coco_instances_checked("test_user_ok", json_file, str(img_dir))
    try:
        assert summary["num_images_without_annotations"] == 1
        meta = MetadataCatalog.get("test_user_ok")
        assert meta.thing_classes == ["red", "green"]
        assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
        assert meta.json_file == json_file and meta.evaluator_type == "coco"
        dicts = DatasetCatalog.get("test_user_ok")
        assert [len(d["annotations"]) for d in dicts] == [2, 1, 0]
        assert [a["category_id"] for a in dicts[0]["annotations"]] == [0, 1]
        assert dicts[0]["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
        mapper = CheckedDatasetMapper(
            is_train=True, augmentations=[], image_format="BGR", use_instance_mask=True
        )
        gray = mapper(copy.deepcopy(dicts[1]))  # a grayscale file becomes 3 channels
        assert gray["image"].shape == (3, 40, 50)
        assert torch.equal(gray["image"][0], gray["image"][2])
        assert gray["instances"].gt_classes.tolist() == [1]
        empty = mapper(copy.deepcopy(dicts[2]))
        assert len(empty["instances"]) == 0
    finally:
        DatasetCatalog.remove("test_user_ok")
        MetadataCatalog.remove("test_user_ok")


def _break_missing_image(coco, tmp_path, img_dir):
    os.remove(img_dir / "b.png")


def _break_category(coco, tmp_path, img_dir):
    coco["annotations"][2]["category_id"] = 9


def _break_empty(coco, tmp_path, img_dir):
    coco["annotations"] = []


def _break_box(coco, tmp_path, img_dir):
    coco["annotations"][1]["bbox"] = [40, 30, 30, 10]  # x + w = 70 > width 64


def _break_image_id(coco, tmp_path, img_dir):
    coco["annotations"][0]["image_id"] = 99


def _break_rle_size(coco, tmp_path, img_dir):
    coco["annotations"][0]["segmentation"] = {"size": [10, 10], "counts": "abc"}


def _break_missing_segmentation(coco, tmp_path, img_dir):
    del coco["annotations"][1]["segmentation"]  # a box-only annotation among masked ones
    del coco["annotations"][2]["segmentation"]


def _break_empty_segmentation(coco, tmp_path, img_dir):
    coco["annotations"][0]["segmentation"] = []  # load_coco_json drops an empty one


def _break_short_polygon(coco, tmp_path, img_dir):
    coco["annotations"][2]["segmentation"] = [[10, 10, 30, 10]]  # 2 points: load_coco_json drops it


def _break_empty_polygon(coco, tmp_path, img_dir):
    coco["annotations"][0]["segmentation"].append([])  # a second, empty polygon


def _break_odd_polygon(coco, tmp_path, img_dir):
    coco["annotations"][1]["segmentation"] = [[40, 30, 60, 30, 60, 40, 40]]


def _break_all_crowd(coco, tmp_path, img_dir):
    for ann in coco["annotations"]:
        ann["iscrowd"] = 1  # Detectron2 drops them all: "No valid data found"


def _break_image_size(coco, tmp_path, img_dir):
    cv2.imwrite(str(img_dir / "b.png"), np.zeros((40, 56), np.uint8))  # the JSON says 50 x 40


def _break_16bit_grey(coco, tmp_path, img_dir):
    # PIL's convert("RGB") clips it: Detectron2 would train on an all-white image
    grey = np.full((40, 50), 30000, np.uint16)
    Image.fromarray(grey).save(img_dir / "b.png")


@pytest.mark.parametrize(
    "breaker, error, pattern",
    [
        (_break_missing_image, FileNotFoundError, r"images\[1\]\.file_name='b.png'.*b\.png"),
        (
            _break_category,
            ValueError,
            r"annotations\[2\]\.category_id: category_id=9 is not declared in categories "
            r"\(declared ids: 3, 7\)",
        ),
        (_break_empty, ValueError, r"annotations: is empty: a training set needs"),
        (
            _break_box,
            ValueError,
            r"annotations\[1\]\.bbox: bbox=\[40, 30, 30, 10\].*outside its "
            r"image.*'a.png', width 64, height 48",
        ),
        (_break_image_id, ValueError, r"annotations\[0\]\.image_id: image_id=99 is not declared"),
        (_break_rle_size, ValueError, r"annotations\[0\]\.segmentation\.size: RLE size \[10, 10\]"),
        (
            _break_missing_segmentation,
            ValueError,
            r"annotations\[1\] \(id 2\): no 'segmentation', while annotations\[0\] \(id 1\) has "
            r"one: 2 of the 3 non-crowd annotations .*model\.roi_heads\.mask_in_features=null "
            r"dataloader\.train\.mapper\.use_instance_mask=False \(LazyConfig.* or "
            r"MODEL\.MASK_ON False \(yacs\)",
        ),
        (
            _break_empty_segmentation,
            ValueError,
            r"annotations\[0\] \(id 1\): empty 'segmentation' \(\[\]\), while annotations\[1\] "
            r"\(id 2\) has one",
        ),
        (
            _break_short_polygon,
            ValueError,
            r"annotations\[2\]\.segmentation\[0\]: a polygon needs at least 3 points \(6 "
            r"coordinates\), got 4",
        ),
        (
            _break_empty_polygon,
            ValueError,
            r"annotations\[0\]\.segmentation\[1\]: a polygon needs at least 3 points .*got 0",
        ),
        (
            _break_odd_polygon,
            ValueError,
            r"annotations\[1\]\.segmentation\[0\]: a polygon needs an even number of "
            r"coordinates, got 7",
        ),
        (
            _break_all_crowd,
            ValueError,
            r"annotations\[\*\]\.iscrowd: all 3 annotations have iscrowd=1: Detectron2 trains on "
            r"non-crowd annotations only",
        ),
        (
            _break_image_size,
            ValueError,
            r"images\[1\]\.width: image id 2, file .*b\.png: the image is 56x40 \(width x height\) "
            r"but the JSON says width 50, height 40$",
        ),
        (
            _break_16bit_grey,
            OSError,
            r"images\[1\]\.file_name='b.png': .*b\.png: 16-bit greyscale image \(PIL mode "
            r"'I;16'\) is not supported: Detectron2 would read it as 8-bit by clipping",
        ),
    ],
)
def test_user_coco_errors_name_file_and_field(tmp_path, breaker, error, pattern):
    coco, img_dir = _user_dataset(tmp_path)
    breaker(coco, tmp_path, img_dir)
    json_file = _write(tmp_path, coco, "bad_ann.json")
    try:
        with pytest.raises(error, match=pattern) as e:
            register_coco_instances_checked("test_user_bad", json_file, str(img_dir))
        assert "bad_ann.json" in str(e.value)
        assert "test_user_bad" not in DatasetCatalog.list()  # nothing registered
    finally:  # a failed case must not make the next ones fail with "already registered"
        if "test_user_bad" in DatasetCatalog.list():
            DatasetCatalog.remove("test_user_bad")
            MetadataCatalog.remove("test_user_bad")


def test_mixed_segmentation_error_names_the_annotation_and_field(tmp_path):
    coco, img_dir = _user_dataset(tmp_path)
    coco["annotations"][2]["segmentation"] = None
    with pytest.raises(DatasetFormatError) as e:
        validate_coco_json(_write(tmp_path, coco), str(img_dir), require_annotations=False)
    assert e.value.file.endswith("ann.json") and e.value.field == "annotations[2].segmentation"
    assert "annotations[2] (id 3): empty 'segmentation' (None)" in str(e.value)


def test_box_only_data_is_valid_and_maps_without_masks(tmp_path):
    """No non-crowd annotation has a segmentation: box-only data (a crowd one may lack it too).
    It maps without masks; a mapper that trains masks rejects it, naming the image."""
    coco, img_dir = _user_dataset(tmp_path)
    for ann in coco["annotations"]:
        del ann["segmentation"]
    coco["annotations"][1]["segmentation"] = []  # empty counts as none
    summary = register_coco_instances_checked("test_user_boxes", _write(tmp_path, coco), img_dir)
    try:
        assert summary["num_annotations"] == 3
        d = DatasetCatalog.get("test_user_boxes")[0]
        mapper = CheckedDatasetMapper(
            is_train=True, augmentations=[], image_format="BGR", use_instance_mask=False
        )
        out = mapper(copy.deepcopy(d))
        assert len(out["instances"]) == 2 and not out["instances"].has("gt_masks")
        # mask-on: not "Cannot find field 'gt_masks'" in the mask head, but the image and the fix
        masked = CheckedDatasetMapper(
            is_train=True, augmentations=[], image_format="BGR", use_instance_mask=True
        )
        with pytest.raises(DatasetFormatError) as e:
            masked(copy.deepcopy(d))
        assert e.value.file == str(img_dir / "a.png")
        assert e.value.field == "annotations[0].segmentation"
        assert str(e.value).startswith(
            f"image {img_dir / 'a.png'} (image_id 1): annotations[0] (bbox [10, 5, 20, 20]) has "
            "no 'segmentation', and no non-crowd annotation of the image has one (box-only data)."
        )
        assert "model.roi_heads.mask_in_features=null" in str(e.value)
        # in inference the annotations are not used
        test_mapper = CheckedDatasetMapper(
            is_train=False, augmentations=[], image_format="BGR", use_instance_mask=True
        )
        assert "instances" not in test_mapper(copy.deepcopy(d))
    finally:
        DatasetCatalog.remove("test_user_boxes")
        MetadataCatalog.remove("test_user_boxes")
    # masks on every non-crowd annotation; a crowd region without one is still valid
    (tmp_path / "crowd").mkdir()
    coco, img_dir = _user_dataset(tmp_path / "crowd")
    coco["annotations"][2].update(iscrowd=1)
    del coco["annotations"][2]["segmentation"]
    assert validate_coco_json(_write(tmp_path, coco), str(img_dir))["num_annotations"] == 3


def _unchecked_dicts(coco, tmp_path, img_dir):
    """The dataset dicts of ``coco`` as Detectron2's register_coco_instances loads them (no
    validation)."""
    register_coco_instances("test_user_unchecked", {}, _write(tmp_path, coco), str(img_dir))
    try:
        return DatasetCatalog.get("test_user_unchecked")
    finally:
        DatasetCatalog.remove("test_user_unchecked")
        MetadataCatalog.remove("test_user_unchecked")


def test_mapper_rejects_mixed_segmentation_of_unchecked_data(tmp_path):
    """Registered with Detectron2's register_coco_instances (no validation), an image whose second
    annotation has no mask: Detectron2's mapper raises a bare KeyError 'segmentation'; ours names
    the image, the annotation and the way to train box-only. The other images still map."""
    coco, img_dir = _user_dataset(tmp_path)
    del coco["annotations"][1]["segmentation"]
    dicts = _unchecked_dicts(coco, tmp_path, img_dir)
    mapper = CheckedDatasetMapper(
        is_train=True, augmentations=[], image_format="BGR", use_instance_mask=True
    )
    with pytest.raises(DatasetFormatError) as e:
        mapper(copy.deepcopy(dicts[0]))
    assert isinstance(e.value, ValueError)
    assert e.value.file == str(img_dir / "a.png")
    assert e.value.field == "annotations[1].segmentation"
    msg = str(e.value)
    assert msg.startswith(
        f"image {img_dir / 'a.png'} (image_id 1): annotations[1] (bbox [40, 30, 20, 10]) has no "
        "'segmentation', while annotations[0] (bbox [10, 5, 20, 20]) has one: 1 of the image's 2 "
        "non-crowd annotations lack one."
    )
    assert (
        "train box-only: model.roi_heads.mask_in_features=null "
        "dataloader.train.mapper.use_instance_mask=False (LazyConfig" in msg
    )
    assert "or MODEL.MASK_ON False (yacs)" in msg
    # the image whose annotations all have a mask, and the image without annotations
    assert len(mapper(copy.deepcopy(dicts[1]))["instances"].gt_masks) == 1
    assert len(mapper(copy.deepcopy(dicts[2]))["instances"]) == 0
    # box-only training drops the masks: the same image maps
    boxes = CheckedDatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    assert len(boxes(copy.deepcopy(dicts[0]))["instances"]) == 2


def test_mapper_checks_dicts_of_a_dataset_function(tmp_path):
    """Dataset dicts built by code: a None segmentation is no mask (named with the annotation's
    id), a crowd annotation needs none (Detectron2 drops it in training)."""
    coco, img_dir = _user_dataset(tmp_path)

    def ann(i, bbox, **kwargs):
        return dict(id=i, bbox=bbox, bbox_mode=BoxMode.XYWH_ABS, category_id=0, **kwargs)

    d = {
        "file_name": str(img_dir / "a.png"),
        "image_id": "a",
        "height": 48,
        "width": 64,
        "annotations": [
            ann(11, [0, 0, 64, 48], iscrowd=1),
            ann(12, [10, 5, 20, 20], segmentation=None),
            ann(13, [40, 30, 20, 10.5], segmentation=[[40, 30, 60, 30, 60, 40, 40, 40]]),
        ],
    }
    mapper = CheckedDatasetMapper(
        is_train=True,
        augmentations=[],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",
    )
    with pytest.raises(DatasetFormatError) as e:
        mapper(copy.deepcopy(d))
    assert e.value.field == "annotations[1].segmentation"
    assert (
        "(image_id 'a'): annotations[1] (id 12, bbox [10, 5, 20, 20]) has an empty "
        "'segmentation' (None), while annotations[2] (id 13, bbox [40, 30, 20, 10.5]) has one"
    ) in str(e.value)
    d["annotations"][1]["segmentation"] = [[10, 5, 30, 5, 30, 25, 10, 25]]
    inst = mapper(copy.deepcopy(d))["instances"]
    assert len(inst) == 2 and inst.gt_masks.tensor.sum().item() > 0


@pytest.mark.slow
def test_box_only_advice_trains(tmp_path):
    """The overrides that the error gives, as written there, train box-only data: LazyConfig on
    the demo config (SA-FPN + EJ-Head) and yacs on a tiny EJ-Head config (one step each)."""
    coco, img_dir = _user_dataset(tmp_path)
    for a in coco["annotations"]:
        del a["segmentation"]
    register_coco_instances_checked("test_user_advice", _write(tmp_path, coco), img_dir)
    try:
        dicts = DatasetCatalog.get("test_user_advice")[:2]
    finally:
        DatasetCatalog.remove("test_user_advice")
        MetadataCatalog.remove("test_user_advice")
    with pytest.raises(DatasetFormatError) as e:
        CheckedDatasetMapper(
            is_train=True, augmentations=[], image_format="BGR", use_instance_mask=True
        )(copy.deepcopy(dicts[0]))
    lazy, yacs = re.search(
        r"train box-only: (.*) \(LazyConfig.* or (.*) \(yacs\)", str(e.value)
    ).groups()

    def one_step(model, mapper):
        model.train()
        torch.manual_seed(0)
        with EventStorage():
            losses = model([mapper(copy.deepcopy(d)) for d in dicts])
        assert "loss_mask" not in losses and "loss_box_reg" in losses
        assert all(torch.isfinite(v) for v in losses.values())

    cfg = apply_lazy_overrides(model_zoo.get_config("demo/sa_shapes.py"), lazy.split())
    assert cfg.model.roi_heads.mask_in_features is None
    one_step(instantiate(cfg.model), instantiate(cfg.dataloader.train.mapper))

    cfg = tiny_yacs_config("unused_train", "unused_test", str(tmp_path / "out"))
    cfg.merge_from_list(yacs.split())
    one_step(build_model(cfg), CheckedDatasetMapper(cfg, is_train=True))


def test_empty_annotations_allowed_for_evaluation_only(tmp_path):
    coco, img_dir = _user_dataset(tmp_path)
    coco["annotations"] = []
    summary = validate_coco_json(_write(tmp_path, coco), str(img_dir), require_annotations=False)
    assert summary["num_annotations"] == 0 and summary["num_images_without_annotations"] == 3


def test_malformed_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [], "annotations": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetFormatError, match=r"broken\.json: malformed JSON at line 2"):
        register_coco_instances_checked("test_user_bad", str(path), str(tmp_path))
    with pytest.raises(DatasetFileNotFoundError, match=r"not found: .*nothere\.json"):
        register_coco_instances_checked("test_user_bad", str(tmp_path / "nothere.json"), "x")
    path.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match=r"broken\.json: annotations: is missing"):
        validate_coco_json(str(path), str(tmp_path))
    assert isinstance(DatasetFormatError("m"), ValueError)


def test_corrupt_image_names_the_file(tmp_path):
    coco, img_dir = _user_dataset(tmp_path)
    data = (img_dir / "a.png").read_bytes()
    (img_dir / "a.png").write_bytes(data[: len(data) // 2])  # truncated file
    register_coco_instances_checked("test_user_corrupt", _write(tmp_path, coco), str(img_dir))
    try:
        d = DatasetCatalog.get("test_user_corrupt")[0]
        mapper = CheckedDatasetMapper(is_train=False, augmentations=[], image_format="BGR")
        with pytest.raises(DatasetImageError, match=r"cannot read image .*a\.png \(image_id 1\)"):
            mapper(d)
        os.remove(img_dir / "a.png")
        with pytest.raises(DatasetFileNotFoundError, match=r"image file not found: .*a\.png"):
            mapper(d)
    finally:
        DatasetCatalog.remove("test_user_corrupt")
        MetadataCatalog.remove("test_user_corrupt")


def test_image_modes_and_exif_rotation_that_detectron2_reads_correctly_register(tmp_path):
    """8-bit modes (palette, RGBA, grey + alpha, 1-bit), 16-bit RGB (PIL reads it as 8-bit RGB)
    and an EXIF-rotated JPEG (the JSON gives the rotated size) pass the header checks and map to
    the size of the JSON."""
    coco, img_dir = _user_dataset(tmp_path)
    rgb = Image.open(img_dir / "a.png").convert("RGB")
    rgb.convert("P").save(img_dir / "a.png")
    grey = Image.open(img_dir / "b.png")
    grey.convert("LA").save(img_dir / "b.png")
    cv2.imwrite(str(img_dir / "c.png"), np.full((32, 32, 3), 40000, np.uint16))
    extra = {
        "rgba.png": rgb.convert("RGBA"),
        "bits.png": rgb.convert("1"),
        "rotated.jpg": rgb.transpose(Image.Transpose.ROTATE_90),  # stored 48 x 64, shown 64 x 48
    }
    exif = Image.Exif()
    exif[274] = 6  # rotate by 90 degrees when shown
    for name, image in extra.items():
        image.save(img_dir / name, **({"exif": exif.tobytes()} if name.endswith(".jpg") else {}))
        iid = len(coco["images"]) + 10
        coco["images"].append({"id": iid, "file_name": name, "height": 48, "width": 64})
    coco["images"][1].update(height=40, width=50)
    register_coco_instances_checked("test_user_modes", _write(tmp_path, coco), str(img_dir))
    try:
        mapper = CheckedDatasetMapper(is_train=False, augmentations=[], image_format="BGR")
        shapes = [tuple(mapper(d)["image"].shape) for d in DatasetCatalog.get("test_user_modes")]
        assert shapes == [(3, 48, 64), (3, 40, 50), (3, 32, 32)] + [(3, 48, 64)] * 3
    finally:
        DatasetCatalog.remove("test_user_modes")
        MetadataCatalog.remove("test_user_modes")


def test_mapper_checks_the_size_and_mode_of_unchecked_data(tmp_path):
    """Registered without the checks (Detectron2's register_coco_instances): the mapper reads each
    image's header, naming the file, the image id and both sizes, or the mode."""
    coco, img_dir = _user_dataset(tmp_path)
    dicts = _unchecked_dicts(coco, tmp_path, img_dir)
    mapper = CheckedDatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    _break_image_size(coco, tmp_path, img_dir)
    with pytest.raises(DatasetFormatError) as e:
        mapper(copy.deepcopy(dicts[1]))
    assert str(e.value) == (
        f"image {img_dir / 'b.png'} (image_id 2): the image is 56x40 (width x height) but its "
        "annotations say width 50, height 40"
    )
    _break_16bit_grey(coco, tmp_path, img_dir)
    with pytest.raises(DatasetImageError, match=r"b\.png \(image_id 2\): 16-bit greyscale") as e:
        mapper(copy.deepcopy(dicts[1]))
    assert e.value.file == str(img_dir / "b.png")
    # the predictor's reader (tools/demo.py) refuses it too
    from sa_ejhead.errors import ImageReadError
    from sa_ejhead.predictor import read_image

    with pytest.raises(ImageReadError, match="16-bit greyscale image"):
        read_image(str(img_dir / "b.png"))


def test_mapper_errors_in_a_loader_worker_reach_the_main_process_whole(tmp_path):
    """In a data-loader worker, the mapper's error is carried with the sample and raised, the same
    error (type, one-line message, file), where the model reads the image; PyTorch would re-raise
    a new exception made of the worker's traceback."""
    from detectron2.data import build_detection_test_loader

    coco, img_dir = _user_dataset(tmp_path)
    register_coco_instances_checked("test_user_worker", _write(tmp_path, coco), str(img_dir))
    try:
        dicts = DatasetCatalog.get("test_user_worker")
    finally:
        DatasetCatalog.remove("test_user_worker")
        MetadataCatalog.remove("test_user_worker")
    data = (img_dir / "b.png").read_bytes()
    (img_dir / "b.png").write_bytes(data[: len(data) // 2])
    mapper = CheckedDatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    loader = build_detection_test_loader(dicts, mapper=mapper, num_workers=1)
    good, bad, empty = [batch[0] for batch in loader]
    assert good["image"].shape == (3, 48, 64) and empty["image"].shape == (3, 32, 32)
    assert (bad["file_name"], bad["width"], bad["height"]) == (str(img_dir / "b.png"), 50, 40)
    with pytest.raises(DatasetImageError) as e:
        bad["image"]
    assert e.value.file == str(img_dir / "b.png")
    assert str(e.value).startswith(f"cannot read image {img_dir / 'b.png'} (image_id 2): OSError")
    assert "\n" not in str(e.value)
    assert "Raised in a data-loader worker process:" in e.value.__notes__[0]


# ------------------------------------------------------------------------------------------------
# the configs' data paths
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config_path, test_name",
    [(c, "coco_2017_val") for c in model_zoo.LAZY_CONFIGS + model_zoo.OTHER_CONFIGS]
    + [("demo/sa_shapes.py", "sa_shapes_val"), ("demo/sa_shapes_baseline.py", "sa_shapes_val")],
)
@pytest.mark.slow
def test_configs_use_checked_mapper_and_our_evaluator(config_path, test_name):
    """COCO (configs/common/coco_sa.py) and demo configs: a missing or corrupt image names its file
    (train and test), and evaluation uses faster-coco-eval on the test set, following an override
    of its name."""
    cfg = model_zoo.get_config(config_path)
    assert cfg.dataloader.train.mapper._target_ is CheckedDatasetMapper
    assert cfg.dataloader.test.mapper._target_ is CheckedDatasetMapper
    assert cfg.dataloader.evaluator._target_ is COCOEvaluator
    assert cfg.dataloader.evaluator.dataset_name == test_name
    cfg.dataloader.test.dataset.names = "my_val"
    assert cfg.dataloader.evaluator.dataset_name == "my_val"
