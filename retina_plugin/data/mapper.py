import logging

from PIL import Image

from detectron2.data import DatasetMapper, build_detection_test_loader

from .custom import DatasetError

logger = logging.getLogger(__name__)


class CheckedDatasetMapper(DatasetMapper):
    """
    detectron2's DatasetMapper, naming the image files it cannot read instead of failing deep
    in a data-loader worker: in training such an image is skipped with a warning (detectron2
    then takes another one); in evaluation it is an error, since a silently missing image
    would change the AP. Empty and crowd-only images, and boxes that are empty or outside the
    image once clipped, are dropped by detectron2 itself.
    """

    def __init__(self, *args, **kwargs):
        # DatasetMapper's arguments: (cfg, is_train) or its explicit ones (LazyConfig).
        super().__init__(*args, **kwargs)
        self._warned = set()

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        # Missing, unreadable or not an image (PIL's error is an OSError), or too large to
        # decode safely (PIL's decompression-bomb guard).
        except (OSError, Image.DecompressionBombError) as e:
            file_name = dataset_dict.get("file_name")
            if not self.is_train:
                raise DatasetError(
                    f"Image {file_name} cannot be read ({e}): restore the file, or remove it "
                    f"from the data set's json."
                ) from None
            if file_name not in self._warned:
                self._warned.add(file_name)
                logger.warning(f"Skipping image {file_name}: it cannot be read ({e}).")
            return None


def build_checked_test_loader(cfg, dataset_name):
    """detectron2's test loader of `dataset_name`, with the CheckedDatasetMapper: the one
    train_net.py evaluates with, and whose random draws ablations/prefix.py replays."""
    return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False))
