"""
A seeded generator of small COCO-format detection data sets: real PNG files and a COCO json
that pycocotools and detectron2's COCO loader read unchanged.

Each category is drawn as a filled shape of its own kind and colour (rectangle, ellipse,
triangle, ...) on a noisy background, at a range of sizes, so a detector can learn it.
"""
import json
import os

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("rectangle", "ellipse", "triangle", "diamond")


def category_style(index):
    """The shape and RGB colour that draw the `index`-th category; distinct for 24 categories."""
    shape = SHAPES[index % len(SHAPES)]
    hue_steps = [(230, 40, 40), (40, 200, 40), (40, 80, 230), (230, 200, 30), (200, 40, 200), (30, 200, 210)]
    color = hue_steps[(index // len(SHAPES)) % len(hue_steps)]
    return shape, color


def _draw(draw, shape, box, color):
    x0, y0, x1, y1 = box
    if shape == "rectangle":
        draw.rectangle(box, fill=color)
    elif shape == "ellipse":
        draw.ellipse(box, fill=color)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)
    else:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)


def write_synthetic_coco(
    image_dir,
    json_path,
    categories,
    num_images,
    image_size=(128, 128),
    objects_per_image=(1, 6),
    object_size=(12, 64),
    seed=0,
    first_image_id=1,
):
    """
    Write `num_images` PNG images into `image_dir` and their COCO annotations to `json_path`.

    Args:
        categories: COCO category dicts ({"id", "name"}); annotations use their ids.
        image_size: (height, width) of every image.
        objects_per_image: (min, max) objects drawn in an image, both inclusive.
        object_size: (min, max) side of an object's box, in pixels.
        seed: the same seed writes the same files.

    Returns:
        the COCO dict that was written.
    """
    rng = np.random.default_rng(seed)
    height, width = image_size
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image_id = first_image_id + i
        file_name = f"{image_id:06d}.png"
        pixels = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
            category_index = int(rng.integers(len(categories)))
            box_w, box_h = rng.integers(object_size[0], object_size[1] + 1, size=2)
            box_w, box_h = int(min(box_w, width - 1)), int(min(box_h, height - 1))
            x0 = int(rng.integers(0, width - box_w))
            y0 = int(rng.integers(0, height - box_h))
            shape, color = category_style(category_index)
            _draw(draw, shape, (x0, y0, x0 + box_w, y0 + box_h), color)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[category_index]["id"],
                    "bbox": [x0, y0, box_w, box_h],
                    "area": float(box_w * box_h),
                    "iscrowd": 0,
                }
            )
        image.save(os.path.join(image_dir, file_name))
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    coco = {
        "info": {"description": f"retina_plugin synthetic shapes, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c["id"], "name": c["name"]} for c in categories],
    }
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(coco, f)
    return coco
