"""torch.export and ONNX export (retina_plugin/export.py, tools/export_model.py), checked
against the eager model's detections."""
import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from retina_plugin.export import ExportableRetinaNet, export_program

from helpers import tiny_cfg
from test_train_net import load_tool


def tiny_model(loss_type="focal"):
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.CLS_LOSS_TYPE = loss_type
    # An untrained model scores near the prior: keep every candidate, so that the 100
    # detections per image go through thresholding, top-k and NMS.
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.005
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def eager(model, image):
    with torch.no_grad():
        instances = model([{"image": image}])[0]["instances"]
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


def assert_same_detections(expected, actual, box_atol=1e-3, score_atol=1e-5):
    boxes, scores, classes = (torch.as_tensor(np.asarray(x)) for x in actual)
    assert len(boxes) == len(expected[0]) > 0
    torch.testing.assert_close(boxes, expected[0], atol=box_atol, rtol=0)
    torch.testing.assert_close(scores, expected[1], atol=score_atol, rtol=0)
    assert torch.equal(classes, expected[2])


@pytest.mark.parametrize("loss_type", ["focal", "softmax_focal"])
def test_exportable_module_gives_the_models_detections(loss_type):
    _, model = tiny_model(loss_type)
    image = load_tool("export_model").synthetic_image(96, 120)
    with torch.no_grad():
        outputs = ExportableRetinaNet(model)(image)
    assert_same_detections(eager(model, image), outputs, box_atol=0, score_atol=0)


@pytest.mark.slow
def test_torch_export_program_runs_like_the_model():
    _, model = tiny_model()
    image = load_tool("export_model").synthetic_image(96, 120)
    program = export_program(model, image)
    with torch.no_grad():
        outputs = program.module()(image)
    assert_same_detections(eager(model, image), outputs, box_atol=0, score_atol=0)


@pytest.mark.slow
def test_dynamic_export_takes_other_sizes():
    _, model = tiny_model()
    tool = load_tool("export_model")
    program = export_program(model, tool.synthetic_image(256, 256), dynamic=True)
    for height, width in ((256, 384), (384, 256)):
        image = tool.synthetic_image(height, width, seed=height)
        with torch.no_grad():
            outputs = program.module()(image)
        assert_same_detections(eager(model, image), outputs, box_atol=1e-4)


def test_dynamic_export_names_the_sizes_it_takes():
    _, model = tiny_model()
    divisor = model.backbone.size_divisibility
    with pytest.raises(ValueError, match=f"multiples of the backbone's size divisibility \\({divisor}\\)"):
        export_program(model, torch.zeros(3, 4 * divisor + 1, 4 * divisor), dynamic=True)


@pytest.mark.slow
def test_onnx_export_command_runs_in_onnxruntime_like_the_model(tmp_path):
    cfg, model = tiny_model()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 128
    (tmp_path / "config.yaml").write_text(cfg.dump())
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    tool = load_tool("export_model")
    output = str(tmp_path / "model.onnx")
    report = tool.main([
        "--config-file", str(tmp_path / "config.yaml"), "--weights", str(tmp_path / "model.pth"),
        "--format", "onnx", "--output", output,
    ])
    assert report["detections"][0] == report["detections"][1] > 0
    # onnxruntime on another image of the exported size.
    image = tool.synthetic_image(96, 128, seed=7)
    assert_same_detections(eager(model, image), tool.run_exported(output, image))
