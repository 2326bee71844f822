from .builtin import BUILTIN_SETS, SHAPE_CATEGORIES, ensure_shapes_split, register_shapes
from .custom import DatasetError, check_num_classes, read_coco_categories, register_coco_dataset
from .mapper import CheckedDatasetMapper, build_checked_test_loader
from .synthetic import make_categories, make_grid_categories, write_synthetic_coco

register_shapes()

__all__ = [
    "BUILTIN_SETS",
    "SHAPE_CATEGORIES",
    "ensure_shapes_split",
    "register_shapes",
    "CheckedDatasetMapper",
    "build_checked_test_loader",
    "DatasetError",
    "check_num_classes",
    "read_coco_categories",
    "register_coco_dataset",
    "make_categories",
    "make_grid_categories",
    "write_synthetic_coco",
]
