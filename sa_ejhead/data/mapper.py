"""A DatasetMapper whose errors name the image file: unreadable images and missing masks."""

import os

from detectron2.data import DatasetMapper

from .validation import (
    BOX_ONLY_ADVICE,
    DatasetFileNotFoundError,
    DatasetFormatError,
    DatasetImageError,
    has_segmentation,
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
    """Detectron2's :class:`DatasetMapper` with clear errors for unreadable images and for
    annotations without a mask where masks are trained.

    Detectron2 reads images with PIL inside the data loader; a truncated or corrupt file raises a
    PIL error that does not always name the file (e.g. "image file is truncated"), and a
    worker's traceback hides which dataset entry it came from. This mapper re-raises any error
    of reading the image as :class:`DatasetImageError` (an ``OSError``) or, for a file that has
    disappeared since registration, :class:`DatasetFileNotFoundError`, with the image path,
    ``image_id`` and the original error in the message.

    In training with ``use_instance_mask=True``, every non-crowd annotation of an image must have
    a segmentation (Detectron2 drops the crowd ones): otherwise Detectron2 fails later with a bare
    ``KeyError: 'segmentation'`` (in ``annotations_to_instances``, when an earlier annotation of
    the image has one) or, in the mask head, ``Cannot find field 'gt_masks'`` (box-only images).
    Data registered with :func:`sa_ejhead.data.register_coco_instances_checked` are checked
    up front; those of Detectron2's ``register_coco_instances`` or a dataset function are
    checked here, image by image, and raise :class:`DatasetFormatError` naming the image file,
    its ``image_id`` and the annotation, with how to train box-only.

    It takes the same arguments as :class:`DatasetMapper` (LazyConfig and yacs ``from_config``).
    """

    def _check_masks(self, dataset_dict):
        """Raise if a non-crowd annotation has no segmentation while masks are trained.

        Args:
            dataset_dict (dict): metadata of one image, in Detectron2 Dataset format.

        Raises:
            DatasetFormatError: the first such annotation, with the image file and ``image_id``.
        """
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
        if "segmentation" not in anno:
            what = "has no 'segmentation'"
        else:
            what = f"has an empty 'segmentation' ({anno['segmentation']!r})"
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
        """Map one dataset dict (see :meth:`DatasetMapper.__call__`).

        Args:
            dataset_dict (dict): metadata of one image, in Detectron2 Dataset format.

        Returns:
            dict: the model's input format.

        Raises:
            DatasetFileNotFoundError: the image file does not exist.
            DatasetImageError: the image file cannot be decoded.
            DatasetFormatError: in training with instance masks, a non-crowd annotation has no
                segmentation.
        """
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
