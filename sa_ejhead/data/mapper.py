"""A DatasetMapper whose image-reading errors name the image file."""

import os

from detectron2.data import DatasetMapper

from .validation import DatasetFileNotFoundError, DatasetImageError

__all__ = ["CheckedDatasetMapper"]


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` with clear errors for unreadable images.

    Detectron2 reads images with PIL inside the data loader; a truncated or corrupt file raises a
    PIL error that does not always name the file (e.g. "image file is truncated"), and a
    worker's traceback hides which dataset entry it came from. This mapper re-raises any error
    of reading the image as :class:`DatasetImageError` (an ``OSError``) or, for a file that has
    disappeared since registration, :class:`DatasetFileNotFoundError`, with the image path,
    ``image_id`` and the original error in the message. It takes the same arguments as
    :class:`DatasetMapper` (LazyConfig and yacs ``from_config``).
    """

    def __call__(self, dataset_dict):
        """Map one dataset dict (see :meth:`DatasetMapper.__call__`).

        Args:
            dataset_dict (dict): metadata of one image, in Detectron2 Dataset format.

        Returns:
            dict: the model's input format.

        Raises:
            DatasetFileNotFoundError: the image file does not exist.
            DatasetImageError: the image file cannot be decoded.
        """
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
