from .builtin import SHAPE_CATEGORIES, ensure_shapes_split, register_shapes
from .synthetic import write_synthetic_coco

register_shapes()

__all__ = ["SHAPE_CATEGORIES", "ensure_shapes_split", "register_shapes", "write_synthetic_coco"]
