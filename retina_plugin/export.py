"""
FocalRetinaNet for inference outside detectron2: torch.export (an ExportedProgram, .pt2) and
ONNX (run by onnxruntime). The command line is tools/export_model.py.

detectron2's RetinaNet takes a list of dicts and returns Instances, and its inference
filters candidates by data-dependent shapes; neither exports. ExportableRetinaNet runs the same
computation on one image tensor and returns plain tensors: the same preprocessing, backbone,
head, anchors, decoding, score threshold, top-k, per-class NMS and detections per image.
"""
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import nms


class ExportableRetinaNet(nn.Module):
    """
    A FocalRetinaNet's inference on one image:

        image (3, H, W) float, the model's input format (cfg.INPUT.FORMAT, 0-255), already
        resized as for the model (cfg.INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST)
        -> boxes (M, 4) XYXY in that image's pixels, scores (M,), classes (M,) int64

    M <= the model's max_detections_per_image. The results are the model's own
    (model([{"image": image}])) up to floating-point rounding.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    def forward(self, image):
        model = self.model
        height, width = image.shape[-2:]
        x = (image.to(model.pixel_mean.device) - model.pixel_mean) / model.pixel_std
        # Zero padding at the bottom and right up to the backbone's divisibility, after
        # normalising, as detectron2's ImageList.from_tensors.
        divisor = max(model.backbone.size_divisibility, 1)
        pad_h = (divisor - height % divisor) % divisor
        pad_w = (divisor - width % divisor) % divisor
        x = F.pad(x, (0, pad_w, 0, pad_h))[None]
        features = model.backbone(x)
        features = [features[f] for f in model.head_in_features]
        logits, deltas = model._transpose_dense_predictions(
            model.head(features), [model.num_logits, 4]
        )
        anchors = model.anchor_generator(features)
        boxes, scores, classes = [], [], []
        for logits_i, deltas_i, anchors_i in zip(logits, deltas, anchors):
            scores_i = model.cls_loss.class_scores(logits_i[0])  # (HWA, K)
            num_classes = scores_i.shape[1]
            scores_i = scores_i.flatten()
            # detectron2 keeps the top TOPK_CANDIDATES_TEST of the scores above the threshold;
            # that is the top TOPK_CANDIDATES_TEST of all scores, then those above it: a
            # top-k of static size first, the data-dependent filter second.
            k = min(model.test_topk_candidates, scores_i.shape[0])
            top_scores, top_idxs = scores_i.topk(k)
            keep = top_scores > model.test_score_thresh
            top_scores, top_idxs = top_scores[keep], top_idxs[keep]
            anchor_idxs = top_idxs // num_classes
            boxes.append(
                model.box2box_transform.apply_deltas(
                    deltas_i[0][anchor_idxs], anchors_i.tensor[anchor_idxs]
                )
            )
            scores.append(top_scores)
            classes.append(top_idxs % num_classes)
        boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
        # Per-class NMS as one NMS over boxes shifted apart by class (torchvision's
        # batched_nms chooses between this and a loop by the data's size, which export cannot).
        # A zero joins the maximum so that no candidates is no error.
        max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
        offsets = classes.to(boxes.dtype) * (max_coordinate + 1)
        keep = nms(boxes + offsets[:, None], scores, model.test_nms_thresh)
        keep = keep[: model.max_detections_per_image]
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        # detector_postprocess: clip to the image, drop boxes left empty.
        boxes = torch.stack(
            [
                boxes[:, 0].clamp(min=0, max=width),
                boxes[:, 1].clamp(min=0, max=height),
                boxes[:, 2].clamp(min=0, max=width),
                boxes[:, 3].clamp(min=0, max=height),
            ],
            dim=1,
        )
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[nonempty], scores[nonempty], classes[nonempty]


def _dynamic_shapes(model, dynamic):
    """
    With `dynamic`, heights and widths that are multiples of the backbone's size
    divisibility (128 for FPN up to P7), from 2 to 64 of them; otherwise the example's size.
    """
    if not dynamic:
        return None
    divisor = max(model.backbone.size_divisibility, 1)
    height = divisor * torch.export.Dim("height_blocks", min=2, max=64)
    width = divisor * torch.export.Dim("width_blocks", min=2, max=64)
    return {"image": {1: height, 2: width}}


def check_example_image(model, image, dynamic):
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"The example image must be (3, H, W), got {tuple(image.shape)}.")
    divisor = max(model.backbone.size_divisibility, 1)
    if dynamic and (image.shape[1] % divisor or image.shape[2] % divisor or min(image.shape[1:]) < 2 * divisor):
        raise ValueError(
            f"A dynamic export takes images whose height and width are multiples of the "
            f"backbone's size divisibility ({divisor}), at least {2 * divisor}: got "
            f"{tuple(image.shape[1:])}. Pad the example (and later inputs) with the pixel mean."
        )


def export_program(model, image, dynamic=False):
    """
    torch.export.export of ExportableRetinaNet(model), for images of `image`'s size, or with
    `dynamic` for any height and width that are multiples of the backbone's size divisibility
    (pad images to them with the pixel mean, which normalises to detectron2's zero padding).
    """
    check_example_image(model, image, dynamic)
    with torch.no_grad():
        return torch.export.export(
            ExportableRetinaNet(model),
            (image,),
            dynamic_shapes=_dynamic_shapes(model, dynamic),
            strict=False,
        )


def export_onnx(model, image, path, dynamic=False):
    """
    ExportableRetinaNet(model) as an ONNX file at `path` (torch.onnx's exporter from
    torch.export; input "image", outputs "boxes", "scores", "classes"), for onnxruntime.
    Sizes as export_program's.
    """
    check_example_image(model, image, dynamic)
    with torch.no_grad():
        program = torch.onnx.export(
            ExportableRetinaNet(model),
            (image,),
            dynamo=True,
            input_names=["image"],
            output_names=["boxes", "scores", "classes"],
            dynamic_shapes=_dynamic_shapes(model, dynamic),
            verbose=False,
        )
    program.save(path)
    return path
