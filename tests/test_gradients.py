"""The classification gradient's size and the background's part of it (retina_plugin/gradients.py,
tools/gradient_sizes.py)."""
import torch

import pytest

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from retina_plugin.gradients import classification_gradient_sizes

from helpers import tiny_batch, tiny_cfg, train_step
from test_analysis import tiny_val_set_and_cfg
from test_train_net import load_tool


def ce_model():
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA, cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.0, -1.0
    cfg.MODEL.RETINANET.LOSS_NORMALIZER = "num_pos"
    torch.manual_seed(0)
    return build_model(cfg)


def test_the_split_is_sigmoid_ce_gradient_by_hand_and_the_whole_matches_backward():
    model, batch = ce_model(), tiny_batch()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    sizes = classification_gradient_sizes(model, batch, clip_value=0.05)
    # Nothing trained, nothing left behind.
    assert all(torch.equal(before[name], p) and p.grad is None for name, p in model.named_parameters())

    # By hand: sigmoid CE summed over pairs and divided by the positive anchors has
    # dL/dz = (p - y) / num_pos; background anchors have y = 0 for every class.
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        logits, _ = model._transpose_dense_predictions(model.head(features), [model.num_logits, 4])
        logits = torch.cat(logits, dim=1).double()
        labels, _ = model.label_anchors(model.anchor_generator(features), [x["instances"] for x in batch])
        labels = torch.stack(labels)
    background, objects = labels == model.num_classes, (labels >= 0) & (labels != model.num_classes)
    num_pos = int(objects.sum())
    assert num_pos > 0 and background.sum() > 10 * num_pos
    p = torch.sigmoid(logits)
    target = torch.nn.functional.one_hot(labels.clamp(min=0), model.num_classes + 1)[..., :-1].double()
    grad = (p - target) / num_pos
    assert sizes["logits_background"] == pytest.approx(float(grad[background].norm()), rel=1e-4)
    assert sizes["logits_objects"] == pytest.approx(float(grad[objects].norm()), rel=1e-4)

    # The two parts together are the gradient an ordinary backward of loss_cls gives.
    model.zero_grad()
    from detectron2.utils.events import EventStorage

    with EventStorage():
        model(batch)["loss_cls"].backward()
    cls_norm = torch.stack([p.grad.double().norm() for p in model.parameters() if p.grad is not None]).norm()
    assert sizes["params_cls"] == pytest.approx(float(cls_norm), rel=1e-4)
    assert sizes["params_cls"] <= sizes["params_background"] + sizes["params_objects"] + 1e-9
    # At the start CE's background outweighs its few objects: the imbalance, in gradient.
    assert sizes["params_background"] > sizes["params_objects"]

    # Clipping's view: each parameter's gradient of the whole loss.
    _, grads, _ = train_step(model, batch)
    norms = [float(g.double().norm()) for g in grads.values()]
    assert sizes["largest_param"] == pytest.approx(max(norms), rel=1e-4)
    assert sizes["params_over_clip"] == sum(n > 0.05 for n in norms) > 0


def test_gradient_sizes_tool_measures_every_headline_loss_at_start_and_at_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))  # Sampling-Free's prior cache
    cfg = tiny_val_set_and_cfg(tmp_path, "gradient_sizes_test_train")
    cfg.DATASETS.TRAIN = ("gradient_sizes_test_train",)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    config = tmp_path / "config.yaml"
    config.write_text(cfg.dump())
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model_0000099")
    tool = load_tool("gradient_sizes")
    with pytest.raises(SystemExit):
        tool.main(["--config-file", str(config), "--weights", str(tmp_path / "missing.pth")])
    assert "missing.pth: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--config-file", str(config), "--batches", "1", "DATASETS.TRAIN", "()"])
    assert "DATASETS.TRAIN is empty" in capsys.readouterr().err
    out = tmp_path / "gradients.md"
    tool.main(["--config-file", str(config), "--weights", "start", str(tmp_path / "model_0000099.pth"),
               "--batches", "1", "--output", str(out)])
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| start") or line.startswith("| after")]
    assert [row[1] for row in rows] == ["CE", "balanced CE, alpha 0.75", "FL gamma 2, alpha 0.25", "Sampling-Free CE"] * 2
    # The checkpoint's run is named by the config.yaml beside it.
    assert rows[4][0] == "| after 100 iterations of FL gamma 2, alpha 0.25, no clipping, 90000 iterations (steps 60000,80000), seed -1"
    # The start is seeded: measured again, the same numbers.
    tool.main(["--config-file", str(config), "--weights", "start", "--batches", "1", "--output", str(tmp_path / "again.md")])
    again = [line for line in (tmp_path / "again.md").read_text().splitlines() if line.startswith("| start")]
    assert again == [" | ".join(row) for row in rows[:4]]
    # Guided scaling gives the classification loss the box loss's size.
    assert rows[3][2] == rows[3][3] and rows[7][2] == rows[7][3]
