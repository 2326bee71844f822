"""The numbers behind the paper's Figures 1 and 4 (retina_plugin/analysis.py), and their PNGs."""
import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from retina_plugin.analysis import collect_p_t, cumulative_normalized_loss, describe_run, loss_against_p_t
from retina_plugin.data import make_categories, register_coco_dataset, write_synthetic_coco

from helpers import tiny_batch, tiny_cfg
from test_train_net import load_tool


def test_figure1_focal_loss_against_p_t():
    p_t = np.array([0.1, 0.5, 0.9, 0.968, 1.0])
    curves = loss_against_p_t(p_t, (0.0, 2.0, 5.0))
    np.testing.assert_allclose(curves[0.0], -np.log(p_t), atol=1e-12)
    # The paper's reading: with gamma 2, p_t = 0.9 loses 100x less than CE, 0.968 about 1000x.
    ratio = curves[0.0][2:4] / curves[2.0][2:4]
    np.testing.assert_allclose(ratio, [100.0, 1 / 0.032**2], rtol=1e-9)
    assert 900 < ratio[1] < 1100
    # Hard examples keep most of their loss; an exact prediction has none.
    assert curves[5.0][0] > 0.5 * curves[0.0][0]
    assert all(curve[-1] == 0 for curve in curves.values())


def test_figure1_png(tmp_path):
    tool = load_tool("plot_paper_figures")
    curves = tool.figure1(str(tmp_path / "fig1.png"))
    assert (tmp_path / "fig1.png").stat().st_size > 10_000
    assert sorted(curves) == [0.0, 0.5, 1.0, 2.0, 5.0]


def test_figure4_cumulative_normalized_loss():
    p_t = np.random.default_rng(0).uniform(0.01, 1.0, 10_000)
    x0, y0 = cumulative_normalized_loss(p_t, 0.0)
    x2, y2 = cumulative_normalized_loss(p_t, 2.0)
    for x, y in ((x0, y0), (x2, y2)):
        assert x[-1] == 1 and np.isclose(y[-1], 1) and np.all(np.diff(y) >= 0)
    # Focusing puts the loss on the hardest few: at every fraction of samples, lowest loss
    # first, gamma 2 has accumulated less of the total than CE.
    assert np.all(y2[:-1] <= y0[:-1] + 1e-12)
    assert 1 - np.interp(0.9, x2, y2) > 1 - np.interp(0.9, x0, y0) + 0.1


def test_figure4_samples_of_an_untrained_model_sit_at_the_prior():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())  # 3 classes, PRIOR_PROB 0.01
    batch = tiny_batch()
    samples = collect_p_t(model, [batch], negatives_per_image=10**9)
    model.train()
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        anchors = model.anchor_generator([features[f] for f in model.head_in_features])
        gt_labels, _ = model.label_anchors(anchors, [x["instances"] for x in batch])
    labels = torch.stack(gt_labels)
    num_positive = int(((labels >= 0) & (labels < 3)).sum())
    assert len(samples["positive"]) == num_positive > 0
    assert len(samples["negative"]) == int((labels >= 0).sum()) * 3 - num_positive
    # The prior initialisation: every class starts near p = 0.01 (the small random weights
    # of the head move it a little).
    assert abs(np.median(samples["positive"]) - 0.01) < 0.005
    assert abs(np.median(samples["negative"]) - 0.99) < 0.005
    assert samples["positive"].max() < 0.1 and samples["negative"].min() > 0.9
    few = collect_p_t(model, [batch], negatives_per_image=50)
    assert len(few["negative"]) == 2 * 50


def tiny_val_set_and_cfg(tmp_path, name):
    """Two 96x96 images of 3 classes registered as `name`, and a tiny config that tests at their size."""
    write_synthetic_coco(tmp_path / "images", tmp_path / "val.json", make_categories(3), 2, image_size=(96, 96), sizes=(12, 40))
    register_coco_dataset(name, str(tmp_path / "val.json"), str(tmp_path / "images"))
    cfg = tiny_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 96
    return cfg


def test_figure4_png_from_a_checkpoint(tmp_path):
    cfg = tiny_val_set_and_cfg(tmp_path, "analysis_test_val")
    (tmp_path / "config.yaml").write_text(cfg.dump())
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    tool = load_tool("plot_paper_figures")
    tool.main([
        "fig4", "--out", str(tmp_path / "fig4.png"), "--config-file", str(tmp_path / "config.yaml"),
        "--weights", str(tmp_path / "model.pth"), "--dataset-name", "analysis_test_val",
        "MODEL.DEVICE", "cpu",
    ])
    assert (tmp_path / "fig4.png").stat().st_size > 10_000


def test_figure4_needs_a_checkpoint():
    tool = load_tool("plot_paper_figures")
    with pytest.raises(SystemExit):
        tool.main(["fig4", "--out", "unused.png"])


def test_anchor_fit_by_hand():
    from retina_plugin.analysis import object_anchor_fit, summarize_anchor_fit

    gt_boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [90, 90, 99, 99]])
    gt_classes = torch.tensor([1, 0, 2])
    # Anchors 0-3 matched to object 0, 4 to object 1, 5 ignored, 6 background; object 2 has none.
    pred_boxes = torch.tensor([
        [0.0, 0, 10, 8],     # IoU 0.8
        [0, 0, 10, 9.5],     # 0.95
        [0, 0, 10, 5],       # 0.5
        [0, 0, 10, 10],      # 1.0
        [50, 50, 60, 57.5],  # 0.75
        [0, 0, 10, 10],      # ignored: not counted though it fits
        [50, 50, 60, 60],    # background
    ])
    class_scores = torch.zeros(7, 3)
    class_scores[:4, 1] = torch.tensor([0.9, 0.6, 0.3, 0.2])  # the 0.8 box first, the 1.0 box last
    class_scores[:4, 0] = 1.0  # another class's scores do not count
    class_scores[4, 0] = 0.4
    matched_idxs = torch.tensor([0, 0, 0, 0, 1, 0, 1])
    anchor_labels = torch.tensor([1, 1, 1, 1, 1, -1, 0])
    objects = object_anchor_fit(pred_boxes, class_scores, gt_boxes, gt_classes, matched_idxs, anchor_labels)
    assert len(objects) == 2
    np.testing.assert_allclose(objects[0][0], [0.8, 0.95, 0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(objects[0][1], [0.9, 0.6, 0.3, 0.2], rtol=1e-6)
    np.testing.assert_allclose(objects[1][0], [0.75])
    fit = summarize_anchor_fit(objects)
    assert fit["objects"] == 2 and fit["anchors"] == 5
    assert fit["anchors_at"] == pytest.approx({0.5: 100.0, 0.75: 80.0, 0.9: 40.0})
    assert fit["mean_anchor_iou"] == pytest.approx((0.8 + 0.95 + 0.5 + 1.0 + 0.75) / 5)
    assert fit["best_at"] == pytest.approx({0.5: 100.0, 0.75: 100.0, 0.9: 50.0})
    assert fit["first_at"] == pytest.approx({0.5: 100.0, 0.75: 100.0, 0.9: 0.0})
    assert fit["mean_best"] == pytest.approx((1.0 + 0.75) / 2) and fit["mean_first"] == pytest.approx((0.8 + 0.75) / 2)
    # Object 0's scores rank its IoUs 0.8, 0.95, 0.5, 1.0 as 4, 3, 2, 1: rho -0.4; object 1 has one anchor.
    assert fit["within_object_rank_correlation"] == pytest.approx(-0.4)
    with pytest.raises(ValueError, match="no object has a matched anchor"):
        summarize_anchor_fit([])


def test_anchor_fit_of_a_model_whose_boxes_are_its_anchors():
    from detectron2.structures import Boxes, pairwise_iou

    from retina_plugin.analysis import anchor_box_fit

    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    with torch.no_grad():  # zero deltas: each anchor predicts itself
        model.head.bbox_pred.weight.zero_()
        model.head.bbox_pred.bias.zero_()
    batch = tiny_batch()
    fit = anchor_box_fit(model, [batch])
    # Measured apart: the matcher's positives and their anchors' IoU with their object.
    images = model.preprocess_image(batch)
    with torch.no_grad():
        features = model.backbone(images.tensor)
    anchors = Boxes.cat(model.anchor_generator([features[f] for f in model.head_in_features]))
    ious, objects = [], 0
    for inputs in batch:
        quality = pairwise_iou(inputs["instances"].gt_boxes, anchors)
        matched_idxs, anchor_labels = model.anchor_matcher(quality)
        positive = anchor_labels == 1
        ious.append(quality[matched_idxs[positive], positive.nonzero()[:, 0]])
        objects += len(set(matched_idxs[positive].tolist()))
    ious = torch.cat(ious).double()
    assert fit["anchors"] == len(ious) > 0 and fit["objects"] == objects
    assert fit["mean_anchor_iou"] == pytest.approx(float(ious.mean()), rel=1e-5)
    assert fit["anchors_at"][0.5] == pytest.approx(float((ious >= 0.5).double().mean() * 100))
    assert fit["mean_best"] >= fit["mean_first"]


def test_anchor_fit_tool_reads_a_runs_checkpoint(tmp_path):
    cfg = tiny_val_set_and_cfg(tmp_path, "anchor_fit_test_val")
    cfg.DATASETS.TEST = ("anchor_fit_test_val",)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.dump())
    tool = load_tool("anchor_fit")
    with pytest.raises(SystemExit, match="no model_final.pth. Give the OUTPUT_DIR of a train_net.py run"):
        tool.main([str(run)])
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(run)).save("model_final")
    tool.main([str(run), "--output", str(tmp_path / "fit.md")])
    rows = [line for line in (tmp_path / "fit.md").read_text().splitlines() if line.startswith("| FL gamma 2")]
    assert len(rows) == 1
    objects, anchors = (int(cell) for cell in rows[0].split(" | ")[1:3])
    assert 0 < objects <= anchors


def test_describe_run_names_the_loss_and_a_prior_other_than_the_papers():
    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA, cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.0, -1.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED, cfg.SEED = False, 1
    assert describe_run(cfg).startswith("CE, no clipping, ") and describe_run(cfg).endswith("seed 1")
    cfg.MODEL.RETINANET.PRIOR_PROB = 0.5  # the standard initialisation: two runs no longer read alike
    assert describe_run(cfg).startswith("CE, bias prior pi = 0.5, no clipping, ")
