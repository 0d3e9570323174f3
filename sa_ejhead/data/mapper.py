"""A DatasetMapper whose errors name the image file, also from data-loader workers."""

import traceback

from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import SizeMismatchError
from torch.utils.data import get_worker_info

from ..errors import DatasetError, DatasetFormatError, DatasetImageError, describe
from .validation import BOX_ONLY_ADVICE, check_image_file, has_segmentation, lacks_segmentation


def _describe(anno):
    """``(id 57, bbox [x, y, w, h])``: what identifies an annotation of a dataset dict."""
    parts = [f"id {anno['id']!r}"] if "id" in anno else []
    if "bbox" in anno:
        parts.append("bbox [" + ", ".join(f"{float(v):g}" for v in anno["bbox"]) + "]")
    return f" ({', '.join(parts)})" if parts else ""


class _FailedSample(dict):
    """What :class:`CheckedDatasetMapper` returns in a data-loader worker for an image it cannot
    map: the keys that Detectron2's aspect-ratio grouping reads, and the error, raised unchanged in
    the main process by the read of any other key (PyTorch would re-raise the worker's traceback
    as a new exception)."""

    def __init__(self, dataset_dict, error):
        keys = ("file_name", "image_id", "width", "height")
        super().__init__({k: dataset_dict[k] for k in keys if k in dataset_dict})
        self.setdefault("width", 1)
        self.setdefault("height", 1)
        self.error = error

    def __missing__(self, key):
        raise self.error


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` (same arguments) whose errors name the image file and
    its ``image_id``: a missing or unreadable image, one of a mode Detectron2 reads wrongly
    (:func:`~sa_ejhead.data.validation.check_image_file`) or of a size other than the dict's, and,
    in training with ``use_instance_mask=True``, a non-crowd annotation without a segmentation.
    """

    def _check_masks(self, dataset_dict):
        """Raise DatasetFormatError for the first non-crowd annotation without a segmentation."""
        annos = dataset_dict.get("annotations") or ()
        noncrowd = [i for i, a in enumerate(annos) if a.get("iscrowd", 0) == 0]
        with_segm = [i for i in noncrowd if has_segmentation(annos[i])]
        if len(with_segm) == len(noncrowd):
            return
        missing = next(i for i in noncrowd if not has_segmentation(annos[i]))
        anno = annos[missing]
        what = "has " + lacks_segmentation(anno, empty="an empty")
        if with_segm:
            others = (
                f"while annotations[{with_segm[0]}]{_describe(annos[with_segm[0]])} has one: "
                f"{len(noncrowd) - len(with_segm)} of the image's {len(noncrowd)} non-crowd "
                "annotations lack one"
            )
        else:
            others = "and no non-crowd annotation of the image has one (box-only data)"
        file_name = dataset_dict.get("file_name", "")
        raise DatasetFormatError(
            f"image {file_name} (image_id {dataset_dict.get('image_id')!r}): "
            f"annotations[{missing}]{_describe(anno)} {what}, {others}. The data loader trains "
            "instance masks (use_instance_mask=True), from every non-crowd annotation: give each "
            "a segmentation (sa_ejhead.data.register_coco_instances_checked checks a whole COCO "
            f"file when it is registered), or {BOX_ONLY_ADVICE}.",
            file=file_name,
            field=f"annotations[{missing}].segmentation",
        )

    def __call__(self, dataset_dict):
        try:
            return self._map(dataset_dict)
        except DatasetError as e:
            if get_worker_info() is None:  # the main process
                raise
            # the worker's traceback, for the error log and --debug
            worker = "".join(traceback.format_exception(e)).rstrip()
            e.add_note(f"Raised in a data-loader worker process:\n{worker}")
            return _FailedSample(dataset_dict, e)

    def _map(self, dataset_dict):
        if self.is_train and self.use_instance_mask:
            self._check_masks(dataset_dict)  # before reading the image
        file_name = dataset_dict.get("file_name", "")
        where = f"image_id {dataset_dict.get('image_id')!r}"
        width, height = check_image_file(file_name, note=f" ({where})")
        expected = (dataset_dict.get("width", width), dataset_dict.get("height", height))
        if (width, height) != expected:
            raise DatasetFormatError(
                f"image {file_name} ({where}): the image is {width}x{height} (width x height) but "
                f"its annotations say width {expected[0]}, height {expected[1]}",
                file=file_name,
                field="width",
            )
        try:
            return super().__call__(dataset_dict)
        except SizeMismatchError as e:  # an EXIF rotation the header check did not see
            raise DatasetFormatError(
                f"image {file_name} ({where}): {describe(e)}", file=file_name, field="width"
            ) from e
        except (OSError, SyntaxError) as e:  # PIL raises these for unreadable files
            raise DatasetImageError(
                f"cannot read image {file_name} ({where}): {describe(e)}", file=file_name
            ) from e
