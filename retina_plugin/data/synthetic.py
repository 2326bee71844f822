"""
A seeded generator of dense, imbalanced detection data sets, written as PNG files and a COCO
json that pycocotools and detectron2's COCO loader read unchanged.

It imitates the problem focal loss addresses: many small objects per image, a few classes,
and a background that is mostly easy but not all easy. Each class is one (shape, colour)
pair; distractors share a class's shape or a class's colour but never both, so a detector
must see both to tell an object from clutter. Object sides are log-uniform over a range that
spans several FPN levels, objects do not overlap much, and some images are empty.
"""
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "cross", "ring")
# More shapes for data sets with more classes; the first two are classes there, the last two
# only distractors (a wedge is a triangle upside down, a half disc half an ellipse: hard).
MORE_SHAPES = ("hexagon", "star", "wedge", "half_disc")
COLORS = {
    "red": (215, 50, 45),
    "green": (50, 170, 60),
    "blue": (45, 80, 210),
    "yellow": (225, 200, 40),
    "magenta": (190, 50, 190),
    "cyan": (40, 185, 200),
    "orange": (235, 130, 30),
    "white": (235, 235, 235),
}


def make_categories(num_classes):
    """COCO categories of the first `num_classes` (shape, colour) classes, ids from 1."""
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in [1, {len(SHAPES)}], got {num_classes}")
    colors = list(COLORS)
    return [
        {"id": i + 1, "name": f"{colors[i]} {SHAPES[i]}", "shape": SHAPES[i], "color": colors[i]}
        for i in range(num_classes)
    ]


def make_grid_categories(shapes, colors):
    """COCO categories of every (shape, colour) pair, shapes varying fastest, ids from 1."""
    unknown = [s for s in shapes if s not in SHAPES + MORE_SHAPES] + [c for c in colors if c not in COLORS]
    if unknown:
        raise ValueError(f"unknown shapes or colours {unknown}")
    pairs = [(shape, color) for color in colors for shape in shapes]
    return [
        {"id": i + 1, "name": f"{color} {shape}", "shape": shape, "color": color}
        for i, (shape, color) in enumerate(pairs)
    ]


def _regular_polygon(cx, cy, rx, ry, corners, phase, inner=None):
    points = []
    steps = corners * (2 if inner else 1)
    for k in range(steps):
        angle = phase + 2 * math.pi * k / steps
        scale = inner if inner and k % 2 else 1.0
        points.append((cx + scale * rx * math.cos(angle), cy + scale * ry * math.sin(angle)))
    return points


def _draw_shape(draw, shape, box, fill):
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = x1 - x0, y1 - y0
    if shape == "ellipse":
        draw.ellipse(box, fill=fill)
    elif shape == "rectangle":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "cross":
        draw.rectangle((x0, cy - h / 6, x1, cy + h / 6), fill=fill)
        draw.rectangle((cx - w / 6, y0, cx + w / 6, y1), fill=fill)
    elif shape == "ring":
        # A disc with a dark centre: close to "ellipse", on purpose.
        draw.ellipse(box, fill=fill)
        inner = (x0 + w / 4, y0 + h / 4, x1 - w / 4, y1 - h / 4)
        draw.ellipse(inner, fill=tuple(int(c * 0.45) for c in fill))
    elif shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, w / 2, h / 2, 6, 0.0), fill=fill)
    elif shape == "star":
        draw.polygon(_regular_polygon(cx, cy, w / 2, h / 2, 5, -math.pi / 2, inner=0.45), fill=fill)
    elif shape == "wedge":
        draw.polygon([(x0, y0), (x1, y0), (cx, y1)], fill=fill)
    elif shape == "half_disc":
        draw.pieslice((x0, y0, x1, y1 + h), 180, 360, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _background(rng, height, width):
    """A smooth colour field with noise and a few random lines: cluttered, not uniform."""
    coarse = rng.integers(40, 150, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32)
    field += rng.normal(0, 12, size=field.shape)
    image = Image.fromarray(field.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        points = [tuple(rng.integers(0, [width, height])) for _ in range(2)]
        gray = int(rng.integers(60, 200))
        draw.line(points, fill=(gray, gray, gray), width=int(rng.integers(1, 3)))
    return image


def _place(rng, sizes, height, width, taken, max_overlap=0.15, tries=30):
    """A box of log-uniform side in `sizes` that overlaps no box in `taken` by more than
    `max_overlap` of its own area; None when none fits."""
    for _ in range(tries):
        side = math.exp(rng.uniform(math.log(sizes[0]), math.log(sizes[1])))
        aspect = math.exp(rng.uniform(-0.4, 0.4))
        w = max(4, min(width - 1, round(side * aspect)))
        h = max(4, min(height - 1, round(side / aspect)))
        x0 = int(rng.integers(0, width - w + 1))
        y0 = int(rng.integers(0, height - h + 1))
        box = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float64)
        if taken:
            others = np.array(taken)
            iw = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
            ih = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
            inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
            areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
            if (inter > max_overlap * np.minimum(w * h, areas)).any():
                continue
        return box
    return None


def render_image(
    rng, categories, image_size, objects, distractors, sizes, empty_prob, distractor_shapes=SHAPES
):
    """One image and its annotations [(category index, [x, y, w, h])]. Distractors are drawn
    from `distractor_shapes` and every colour."""
    height, width = image_size
    image = _background(rng, height, width)
    draw = ImageDraw.Draw(image)
    if rng.random() < empty_prob:
        return image, []
    class_shapes = {c["shape"] for c in categories}
    class_colors = {c["color"] for c in categories}
    pairs = {(c["shape"], c["color"]) for c in categories}
    taken, annotations = [], []
    num_objects = int(rng.integers(objects[0], objects[1] + 1))
    num_distractors = int(rng.integers(distractors[0], distractors[1] + 1))
    # Drawn in a random order, so objects and distractors mix.
    kinds = np.array([True] * num_objects + [False] * num_distractors)
    rng.shuffle(kinds)
    for is_object in kinds:
        box = _place(rng, sizes, height, width, taken)
        if box is None:
            continue
        taken.append(box)
        if is_object:
            index = int(rng.integers(len(categories)))
            shape, color = categories[index]["shape"], categories[index]["color"]
        else:
            # A class's shape in another colour, or a class's colour on another shape.
            while True:
                shape = distractor_shapes[int(rng.integers(len(distractor_shapes)))]
                color = list(COLORS)[int(rng.integers(len(COLORS)))]
                if (shape, color) not in pairs and (shape in class_shapes or color in class_colors):
                    break
        jitter = rng.integers(-20, 21, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[color], jitter))
        _draw_shape(draw, shape, tuple(box.tolist()), fill)
        if is_object:
            x0, y0, x1, y1 = box.tolist()
            annotations.append((index, [x0, y0, x1 - x0, y1 - y0]))
    return image, annotations


def write_synthetic_coco(
    image_dir,
    json_path,
    categories,
    num_images,
    image_size=(160, 160),
    objects=(8, 30),
    distractors=(4, 12),
    sizes=(8, 64),
    empty_prob=0.05,
    seed=0,
    progress=False,
    styles=None,
    distractor_shapes=SHAPES,
):
    """
    Write `num_images` PNG images into `image_dir` and their COCO annotations to `json_path`.

    Args:
        categories: COCO category dicts ({"id", "name"}); the i-th is drawn as the i-th of
            `styles`. Annotations use the given ids.
        image_size: (height, width) of every image.
        objects, distractors: (min, max) of each per image, both inclusive; fewer when the
            image is full.
        sizes: (min, max) side of an object's box in pixels, log-uniform.
        empty_prob: the share of images with no object and no distractor.
        seed: the same arguments and seed write the same files, byte for byte.
        progress: show a progress bar.
        styles: one {"shape", "color"} dict per category (make_grid_categories() gives
            them); default: make_categories()'s pairs, one shape and one colour per class.
        distractor_shapes: the shapes distractors are drawn from (with any colour), a class's
            shape in another colour or another shape in a class's colour, never a class.

    Returns:
        the COCO dict that was written.
    """
    if styles is None:
        styles = make_categories(len(categories))
    if len(styles) != len(categories):
        raise ValueError(f"{len(categories)} categories but {len(styles)} styles")
    rng = np.random.default_rng(seed)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(num_images), desc="generating images", disable=not progress):
        image_id = i + 1
        image, objects_in_image = render_image(
            rng, styles, image_size, objects, distractors, sizes, empty_prob, distractor_shapes
        )
        file_name = f"{image_id:06d}.png"
        image.save(os.path.join(image_dir, file_name))
        images.append(
            {"id": image_id, "file_name": file_name, "height": image_size[0], "width": image_size[1]}
        )
        for index, bbox in objects_in_image:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": categories[index]["id"],
                    "bbox": bbox,
                    "area": float(bbox[2] * bbox[3]),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"retina_plugin synthetic dense shapes, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c["id"], "name": c["name"]} for c in categories],
    }
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(coco, f)
    return coco
