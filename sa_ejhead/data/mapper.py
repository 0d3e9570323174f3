"""A DatasetMapper whose errors name the image file: unreadable images, images of the wrong size
or of a mode Detectron2 reads wrongly, and missing masks; also from data-loader workers."""

import os
import traceback

from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import SizeMismatchError
from torch.utils.data import get_worker_info

from ..errors import describe
from .validation import (
    BOX_ONLY_ADVICE,
    DatasetError,
    DatasetFileNotFoundError,
    DatasetFormatError,
    DatasetImageError,
    check_image_file,
    has_segmentation,
    lacks_segmentation,
)

__all__ = ["CheckedDatasetMapper"]


def _describe(anno):
    """``(id 57, bbox [x, y, w, h])``: what identifies an annotation of a dataset dict."""
    parts = []
    if "id" in anno:
        parts.append(f"id {anno['id']!r}")
    if "bbox" in anno:
        parts.append("bbox [" + ", ".join(f"{float(v):g}" for v in anno["bbox"]) + "]")
    return f" ({', '.join(parts)})" if parts else ""


class _FailedSample(dict):
    """What :class:`CheckedDatasetMapper` returns, in a data-loader worker process, for an image
    it cannot map: the image's ``file_name``, ``image_id``, ``width`` and ``height`` (which
    Detectron2's aspect-ratio grouping reads) and the error, which the first read of any other
    key (``"image"``, by the model) raises in the main process.

    PyTorch would re-raise the error itself as a new exception of its type, made from its
    worker's formatted traceback (its ``file``, ``field`` and one-line message lost); this
    carries the error object, pickled, to the main process instead.
    """

    def __init__(self, dataset_dict, error):
        keys = ("file_name", "image_id", "width", "height")
        super().__init__({k: dataset_dict[k] for k in keys if k in dataset_dict})
        self.setdefault("width", 1)
        self.setdefault("height", 1)
        self.error = error

    def __missing__(self, key):
        raise self.error


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` (same arguments) with errors that name the image file
    and its ``image_id``.

    Detectron2 reads images with PIL inside the data loader, whose errors do not always name the
    file (e.g. "image file is truncated"); this mapper re-raises them as
    :class:`DatasetImageError` (an ``OSError``) or, for a file that has disappeared since
    registration, :class:`DatasetFileNotFoundError`. It reads each image's header first
    (:func:`~sa_ejhead.data.validation.check_image_file`): an image whose mode Detectron2 would
    read wrongly (16-bit greyscale) is a DatasetImageError, one whose size differs from the
    dict's ``width`` and ``height`` a :class:`DatasetFormatError`, both naming the file.

    In a data-loader worker process, such an error is not raised there but carried to the main
    process with the sample, and raised there, unchanged, when the model reads the image.

    In training with ``use_instance_mask=True``, a non-crowd annotation without a segmentation
    raises :class:`DatasetFormatError` naming the annotation, with how to train box-only, instead
    of Detectron2's later bare ``KeyError: 'segmentation'`` or ``Cannot find field 'gt_masks'``
    (data not checked up front by :func:`sa_ejhead.data.register_coco_instances_checked`).
    """

    def _check_masks(self, dataset_dict):
        """Raise DatasetFormatError for the first non-crowd annotation without a segmentation."""
        annos = dataset_dict.get("annotations") or ()
        # one pass over the image's annotations; the rest only when there is an error
        missing = next(
            (
                i
                for i, anno in enumerate(annos)
                if anno.get("iscrowd", 0) == 0 and not has_segmentation(anno)
            ),
            None,
        )
        if missing is None:
            return
        anno = annos[missing]
        what = "has " + lacks_segmentation(anno, empty="an empty")
        noncrowd = [i for i, a in enumerate(annos) if a.get("iscrowd", 0) == 0]
        with_segm = [i for i in noncrowd if has_segmentation(annos[i])]
        if with_segm:
            others = (
                f"while annotations[{with_segm[0]}]{_describe(annos[with_segm[0]])} has one: "
                f"{len(noncrowd) - len(with_segm)} of the image's {len(noncrowd)} non-crowd "
                "annotations lack one"
            )
        else:
            others = "and no non-crowd annotation of the image has one (box-only data)"
        file_name = dataset_dict.get("file_name", "")
        field = f"annotations[{missing}].segmentation"
        raise DatasetFormatError(
            f"image {file_name} (image_id {dataset_dict.get('image_id')!r}): "
            f"annotations[{missing}]{_describe(anno)} {what}, {others}. The data loader trains "
            "instance masks (use_instance_mask=True), from every non-crowd annotation: give each "
            "a segmentation (sa_ejhead.data.register_coco_instances_checked checks a whole COCO "
            f"file when it is registered), or {BOX_ONLY_ADVICE}.",
            file=file_name,
            field=field,
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
            if not os.path.isfile(file_name):
                raise DatasetFileNotFoundError(
                    f"image file not found: {file_name} ({where})", file=file_name
                ) from e
            raise DatasetImageError(
                f"cannot read image {file_name} ({where}): {describe(e)}",
                file=file_name,
            ) from e
