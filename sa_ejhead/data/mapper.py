"""A DatasetMapper whose errors name the image file: unreadable images and missing masks."""

import os

from detectron2.data import DatasetMapper

from .validation import (
    BOX_ONLY_ADVICE,
    DatasetFileNotFoundError,
    DatasetFormatError,
    DatasetImageError,
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


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` (same arguments) with errors that name the image file
    and its ``image_id``.

    Detectron2 reads images with PIL inside the data loader, whose errors do not always name the
    file (e.g. "image file is truncated"); this mapper re-raises them as
    :class:`DatasetImageError` (an ``OSError``) or, for a file that has disappeared since
    registration, :class:`DatasetFileNotFoundError`.

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
        if self.is_train and self.use_instance_mask:
            self._check_masks(dataset_dict)  # before reading the image
        file_name = dataset_dict.get("file_name", "")
        try:
            return super().__call__(dataset_dict)
        except (DatasetImageError, DatasetFileNotFoundError):
            raise
        except (OSError, SyntaxError) as e:  # PIL raises these for unreadable files
            where = f"image_id {dataset_dict.get('image_id')!r}"
            if not os.path.isfile(file_name):
                raise DatasetFileNotFoundError(
                    f"image file not found: {file_name} ({where})", file=file_name
                ) from e
            raise DatasetImageError(
                f"cannot read image {file_name} ({where}): {type(e).__name__}: {e}",
                file=file_name,
            ) from e
