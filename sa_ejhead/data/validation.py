"""Up-front checks of COCO-format instance annotations and image headers: the faults that
otherwise surface late and obscurely in Detectron2's loader, mapper or evaluator (what is
accepted: docs/data.md, "Your own COCO-format data")."""

import json
import math
import numbers
import os

from PIL import ExifTags, Image, ImageMode

from ..errors import (
    DatasetError,
    DatasetFileNotFoundError,
    DatasetFormatError,
    DatasetImageError,
    describe,
)

# How to train data without masks. LazyConfig needs both settings: the ROI heads derive mask_on
# from mask_in_features, and the train mapper loads masks while use_instance_mask=True. Hydra's
# parser reads null as None ("None" would be a string).
BOX_ONLY_ADVICE = (
    "train box-only: model.roi_heads.mask_in_features=null "
    "dataloader.train.mapper.use_instance_mask=False (LazyConfig command line; "
    "mask_in_features = None in a .py config), or MODEL.MASK_ON False (yacs)"
)


# PIL modes that Detectron2's read_image converts to 8 bits by clipping every value above 255.
_WIDE_MODES = {
    **dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N"), "16-bit greyscale"),
    "I": "32-bit integer greyscale",
    "F": "32-bit float greyscale",
}


def _supported_mode(mode):
    """Whether Detectron2 reads a PIL image of this mode correctly: 8 bits (or 1) per band."""
    try:
        return ImageMode.getmode(mode).typestr in ("|u1", "|b1")
    except KeyError:  # a mode PIL has no description of
        return False


def check_image_file(path, prefix="", note=""):
    """``(width, height)`` of the image file ``path`` as Detectron2's ``read_image`` will see it
    (after its EXIF rotation), from its header only; a :class:`DatasetFileNotFoundError` or a
    :class:`DatasetImageError` (unreadable header, more than 8 bits per band) whose message has
    ``prefix`` before it and ``note`` (e.g. ``" (image_id 3)"``) after the file name."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode = image.mode
            # a PNG's EXIF after its pixels would need decoding them (the mapper catches it)
            has_exif = image.format != "PNG" or "exif" in image.info
            orientation = image.getexif().get(ExifTags.Base.Orientation) if has_exif else None
    except FileNotFoundError as e:
        raise DatasetFileNotFoundError(
            f"{prefix}image file not found: {path}{note}", file=path
        ) from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for a broken header
        raise DatasetImageError(
            f"{prefix}cannot read image {path}{note}: {describe(e)}", file=path
        ) from e
    if not _supported_mode(mode):
        what = _WIDE_MODES.get(mode, "more than 8 bits per band")
        raise DatasetImageError(
            f"{prefix}{path}{note}: {what} image (PIL mode {mode!r}) is not supported: "
            "Detectron2 would read it as 8-bit by clipping every value above 255. Convert it to "
            "8 bits per channel (for 16-bit greyscale, 8-bit greyscale = value // 257, as "
            "viewers show it)",
            file=path,
        )
    if orientation in (5, 6, 7, 8):  # Detectron2's read_image turns the image by 90 degrees
        width, height = height, width
    return width, height


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_box(v):
    return isinstance(v, list) and len(v) == 4 and all(_is_number(x) for x in v)


def _is_rle_counts(v):
    return isinstance(v, str) or (isinstance(v, list) and all(_is_int(x) for x in v))


class _Checker:
    """Raises :class:`DatasetFormatError` naming the file and the field."""

    def __init__(self, json_file):
        self.json_file = json_file

    def fail(self, field, problem):
        where = f"{field}: " if field else ""
        raise DatasetFormatError(
            f"{self.json_file}: {where}{problem}", file=self.json_file, field=field
        )

    def require(self, obj, key, field, kind, check):
        """Return ``obj[key]`` after checking it exists and ``check(value)`` holds."""
        name = f"{field}.{key}"
        if not isinstance(obj, dict):
            self.fail(field, f"must be a JSON object, got {type(obj).__name__}")
        if key not in obj:
            self.fail(name, f"is missing (expected {kind})")
        value = obj[key]
        if not check(value):
            self.fail(name, f"must be {kind}, got {value!r}")
        return value


def _load_json(json_file):
    if not os.path.isfile(json_file):
        raise DatasetFileNotFoundError(
            f"COCO annotation file not found: {json_file}", file=json_file
        )
    try:
        with open(json_file, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(
            f"{json_file}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}",
            file=json_file,
        ) from e
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{json_file}: not UTF-8 text ({e})", file=json_file) from e


def _check_segmentation(c, segm, field, img):
    if isinstance(segm, list):
        for k, poly in enumerate(segm):
            f = f"{field}[{k}]"
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                c.fail(f, "a polygon must be a list of numbers [x1, y1, x2, y2, ...]")
            if len(poly) % 2:
                c.fail(f, f"a polygon needs an even number of coordinates, got {len(poly)}")
            if len(poly) < 6:
                # load_coco_json would drop it (and the annotation if none is left) with a warning
                c.fail(
                    f,
                    f"a polygon needs at least 3 points (6 coordinates), got {len(poly)}: {poly!r}",
                )
    elif isinstance(segm, dict):
        size = c.require(
            segm, "size", field, "[height, width]", lambda v: isinstance(v, list) and len(v) == 2
        )
        if list(size) != [img["height"], img["width"]]:
            c.fail(
                f"{field}.size",
                f"RLE size {size} differs from its image's [height, width] = "
                f"[{img['height']}, {img['width']}] (file_name {img['file_name']!r})",
            )
        c.require(segm, "counts", field, "an RLE string or a list of run lengths", _is_rle_counts)
    else:
        c.fail(field, f"must be a list of polygons or an RLE object, got {type(segm).__name__}")


def has_segmentation(anno):
    """Whether an annotation has a mask to train on: a ``segmentation`` that is not None, nor an
    empty list or dict (the rule of the COCO file check and of :class:`CheckedDatasetMapper`)."""
    segm = anno.get("segmentation")
    return not (segm is None or (isinstance(segm, (list, tuple, dict)) and len(segm) == 0))


def lacks_segmentation(anno, empty="empty"):
    """How an annotation without a mask (:func:`has_segmentation`) lacks it, for the errors."""
    if "segmentation" not in anno:
        return "no 'segmentation'"
    return f"{empty} 'segmentation' ({anno['segmentation']!r})"


def _check_masks_consistent(c, anns, with_segm, without_segm):
    """Fail if some (``with_segm``), but not all (``without_segm``), non-crowd annotations have a
    segmentation: Detectron2's mapper and mask head need one on each, or none."""
    if not with_segm or not without_segm:
        return
    i, k = without_segm[0], with_segm[0]
    ann = anns[i]
    raise DatasetFormatError(
        f"{c.json_file}: annotations[{i}] (id {ann['id']}): {lacks_segmentation(ann)}, "
        f"while annotations[{k}] (id {anns[k]['id']}) has one: {len(without_segm)} of the "
        f"{len(with_segm) + len(without_segm)} non-crowd annotations have no segmentation. "
        "Detectron2 trains masks from every non-crowd annotation, so give each a segmentation; "
        f"box-only data must have none, and {BOX_ONLY_ADVICE}.",
        file=c.json_file,
        field=f"annotations[{i}].segmentation",
    )


def validate_coco_json(json_file, image_root, *, require_annotations=True):
    """Check a COCO instances file and the headers of its images under ``image_root``; raise a
    :class:`DatasetError` naming the file and the field at the first fault.

    ``require_annotations`` (a training set): ``annotations`` must not be empty nor all crowd.
    Returns ``categories`` (``{"id", "name"}`` sorted by id), ``num_images``,
    ``num_annotations`` and ``num_images_without_annotations``.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    c = _Checker(json_file)
    data = _load_json(json_file)
    if not isinstance(data, dict):
        c.fail(None, f"the top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            c.fail(
                key,
                "is missing: a COCO instances file has 'images', 'annotations' and 'categories'",
            )
        if not isinstance(data[key], list):
            c.fail(key, f"must be a list, got {type(data[key]).__name__}")

    # categories
    if not data["categories"]:
        c.fail("categories", "is empty: declare at least one category")
    cat_names = {}
    for i, cat in enumerate(data["categories"]):
        f = f"categories[{i}]"
        cid = c.require(cat, "id", f, "an integer", _is_int)
        c.require(cat, "name", f, "a non-empty string", lambda v: isinstance(v, str) and v)
        if cid in cat_names:
            c.fail(f"{f}.id", f"duplicate category id {cid}")
        cat_names[cid] = cat["name"]

    # images
    if not os.path.isdir(image_root):
        raise DatasetFileNotFoundError(
            f"{json_file}: the image folder {image_root} does not exist", file=image_root
        )
    images = {}
    for i, img in enumerate(data["images"]):
        f = f"images[{i}]"
        iid = c.require(img, "id", f, "an integer", _is_int)
        file_name = c.require(
            img, "file_name", f, "a file name", lambda v: isinstance(v, str) and v
        )
        for key in ("height", "width"):
            c.require(img, key, f, "a positive integer", lambda v: _is_int(v) and v > 0)
        if iid in images:
            c.fail(f"{f}.id", f"duplicate image id {iid} (also images[{images[iid][0]}])")
        images[iid] = (i, img)
        path = os.path.join(image_root, file_name)
        try:
            width, height = check_image_file(path, f"{json_file}: {f}.file_name={file_name!r}: ")
        except DatasetError as e:
            e.field = f"{f}.file_name"
            raise
        if (width, height) != (img["width"], img["height"]):
            c.fail(
                f"{f}.width",
                f"image id {iid}, file {path}: the image is {width}x{height} (width x height) but "
                f"the JSON says width {img['width']}, height {img['height']}",
            )

    # annotations
    anns = data["annotations"]
    if not anns and require_annotations:
        c.fail(
            "annotations",
            "is empty: a training set needs at least one annotation (register it with "
            "require_annotations=False if it is only evaluated)",
        )
    declared = ", ".join(str(k) for k in sorted(cat_names))
    ann_ids = {}
    annotated = set()
    with_segm, without_segm = [], []  # non-crowd annotations with / without a segmentation
    for i, ann in enumerate(anns):
        f = f"annotations[{i}]"
        aid = c.require(ann, "id", f, "an integer", _is_int)
        if aid in ann_ids:
            c.fail(f"{f}.id", f"duplicate annotation id {aid} (also annotations[{ann_ids[aid]}])")
        ann_ids[aid] = i
        iid = c.require(ann, "image_id", f, "an integer", _is_int)
        if iid not in images:
            c.fail(f"{f}.image_id", f"image_id={iid} is not declared in images")
        img = images[iid][1]
        cid = c.require(ann, "category_id", f, "an integer", _is_int)
        if cid not in cat_names:
            c.fail(
                f"{f}.category_id",
                f"category_id={cid} is not declared in categories (declared ids: {declared})",
            )
        bbox = c.require(ann, "bbox", f, "[x, y, width, height] with 4 finite numbers", _is_box)
        x, y, w, h = bbox
        if w < 0 or h < 0:
            c.fail(f"{f}.bbox", f"bbox={bbox} has a negative width or height")
        W, H = img["width"], img["height"]
        t = 1.0  # a box may stick out of its image by this much (rounding in exported files)
        if x < -t or y < -t or x + w > W + t or y + h > H + t:
            c.fail(
                f"{f}.bbox",
                f"bbox={bbox} (x, y, w, h) lies outside its image "
                f"images[{images[iid][0]}] (id {iid}, file_name {img['file_name']!r}, "
                f"width {W}, height {H})",
            )
        if "segmentation" in ann and ann["segmentation"] not in (None, []):
            _check_segmentation(c, ann["segmentation"], f"{f}.segmentation", img)
        if ann.get("iscrowd", 0) not in (0, 1):
            c.fail(f"{f}.iscrowd", f"must be 0 or 1, got {ann['iscrowd']!r}")
        if not ann.get("iscrowd", 0):
            (with_segm if has_segmentation(ann) else without_segm).append(i)
        if ann.get("ignore", 0) != 0:
            c.fail(
                f"{f}.ignore",
                "'ignore' annotations are not supported by Detectron2; use iscrowd=1 or remove them",
            )
        annotated.add(iid)
    _check_masks_consistent(c, anns, with_segm, without_segm)
    if anns and require_annotations and not with_segm and not without_segm:
        c.fail(
            "annotations[*].iscrowd",
            f"all {len(anns)} annotations have iscrowd=1: Detectron2 trains on non-crowd "
            "annotations only, so a training set needs at least one with iscrowd=0 (register it "
            "with require_annotations=False if it is only evaluated)",
        )
    return {
        "categories": [{"id": k, "name": cat_names[k]} for k in sorted(cat_names)],
        "num_images": len(images),
        "num_annotations": len(anns),
        "num_images_without_annotations": len(set(images) - annotated),
    }
