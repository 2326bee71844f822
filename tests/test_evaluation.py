"""The COCO evaluation engines (retina_plugin/evaluation.py): faster-coco-eval gives the same
stats as pycocotools, alone and behind detectron2's COCOEvaluator."""
import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.structures import Boxes, Instances

from retina_plugin.evaluation import EngineCOCOEvaluator, faster_cocoeval_class


def synthetic_results(num_images=60, num_classes=5, seed=0):
    """A COCO ground truth and noisy detections of it (some misses, some false positives)."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 320, "height": 240, "file_name": f"{image_id}.png"})
        for _ in range(rng.integers(0, 8)):
            w, h = rng.uniform(8, 150, 2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            category = int(rng.integers(1, num_classes + 1))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.03)})
            if rng.random() < 0.85:
                jitter = rng.normal(0, 0.1 * min(w, h), 4)
                results.append({"image_id": image_id, "score": float(rng.random()),
                                "category_id": category if rng.random() < 0.9 else int(rng.integers(1, num_classes + 1)),
                                "bbox": [x + jitter[0], y + jitter[1], max(1, w + jitter[2]), max(1, h + jitter[3])]})
        for _ in range(rng.integers(0, 6)):
            results.append({"image_id": image_id, "score": float(rng.random() * 0.5),
                            "category_id": int(rng.integers(1, num_classes + 1)),
                            "bbox": [*rng.uniform(0, 200, 2), *rng.uniform(5, 100, 2)]})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"c{c}"} for c in range(1, num_classes + 1)]}
    return coco, results


def coco_api(coco):
    api = COCO()
    api.dataset = coco
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


@pytest.mark.parametrize("seed", [0, 1])
def test_faster_coco_eval_gives_pycocotools_stats(seed):
    coco, results = synthetic_results(seed=seed)
    stats = {}
    for name, cocoeval in (("pycocotools", COCOeval), ("faster", faster_cocoeval_class())):
        with contextlib.redirect_stdout(io.StringIO()):
            evaluated = _evaluate_predictions_on_coco(coco_api(coco), results, "bbox", cocoeval_fn=cocoeval)
        stats[name] = (np.array(evaluated.stats), evaluated.eval["precision"])
    assert len(stats["faster"][0]) == 12 and 0.1 < stats["pycocotools"][0][0] < 0.9
    np.testing.assert_allclose(stats["faster"][0], stats["pycocotools"][0], atol=1e-6)
    # The per-class precisions COCOEvaluator reads for its per-category AP table too.
    np.testing.assert_allclose(stats["faster"][1], stats["pycocotools"][1], atol=1e-6)


def test_evaluator_engines_agree_and_a_bad_engine_is_refused(tmp_path):
    import json

    coco, results = synthetic_results(num_images=20, seed=3)
    json_file = tmp_path / "gt.json"
    json_file.write_text(json.dumps(coco))
    name = "engine_test_gt"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(json_file=str(json_file), thing_classes=[c["name"] for c in coco["categories"]],
                                  thing_dataset_id_to_contiguous_id={c["id"]: c["id"] - 1 for c in coco["categories"]})
    inputs = [{"image_id": image["id"]} for image in coco["images"]]
    outputs = []
    for image in coco["images"]:
        mine = [r for r in results if r["image_id"] == image["id"]]
        instances = Instances((image["height"], image["width"]))
        xywh = torch.tensor([r["bbox"] for r in mine], dtype=torch.float32).reshape(-1, 4)
        instances.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
        instances.scores = torch.tensor([r["score"] for r in mine])
        instances.pred_classes = torch.tensor([r["category_id"] - 1 for r in mine], dtype=torch.int64)
        outputs.append({"instances": instances})
    found = {}
    for engine in ("pycocotools", "faster_coco_eval"):
        evaluator = EngineCOCOEvaluator(name, engine=engine, tasks=("bbox",), distributed=False)
        evaluator.reset()
        evaluator.process(inputs, outputs)
        with contextlib.redirect_stdout(io.StringIO()):
            found[engine] = evaluator.evaluate()["bbox"]
    assert found["faster_coco_eval"].keys() == found["pycocotools"].keys()
    assert "AP-c1" in found["pycocotools"] and found["pycocotools"]["AP"] > 0
    for key, value in found["pycocotools"].items():
        assert found["faster_coco_eval"][key] == pytest.approx(value, abs=1e-4), key
    with pytest.raises(ValueError, match="choose one of faster_coco_eval, pycocotools"):
        EngineCOCOEvaluator(name, engine="cocoapi")


def exact_and_loose_results(num_images=10):
    """A ground truth of one 40 x 40 box per image, found exactly in half the images and, in the
    other half, scored lower, by a box 4 px wider (IoU 40 / 44 = 0.909), each once."""
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 100, "height": 100, "file_name": f"{image_id}.png"})
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [20, 20, 40, 40],
                            "area": 1600, "iscrowd": 0})
        width = 40 if image_id % 2 else 44
        results.append({"image_id": image_id, "category_id": 1, "score": 0.9 if width == 40 else 0.5,
                        "bbox": [20, 20, width, 40]})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "c1"}]}
    return coco, results


def test_ap_at_each_iou_averages_to_coco_ap_and_places_a_loose_box():
    from retina_plugin.evaluation import ap_at_each_iou

    coco, results = synthetic_results(seed=2)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluated = _evaluate_predictions_on_coco(coco_api(coco), results, "bbox", cocoeval_fn=faster_cocoeval_class())
    ap = ap_at_each_iou(evaluated)
    assert list(ap) == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert np.mean(list(ap.values())) == pytest.approx(evaluated.stats[0] * 100, abs=1e-6)
    assert (ap[0.5], ap[0.75]) == pytest.approx((evaluated.stats[1] * 100, evaluated.stats[2] * 100), abs=1e-6)
    assert ap[0.5] > ap[0.95]

    # Half the boxes match at IoU 0.909: all found up to 0.9; at 0.95 the exact half comes first,
    # precision 1 up to recall 0.5: 51 of COCO's 101 recall points.
    coco, results = exact_and_loose_results()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluated = _evaluate_predictions_on_coco(coco_api(coco), results, "bbox", cocoeval_fn=faster_cocoeval_class())
    ap = ap_at_each_iou(evaluated)
    assert all(ap[t] == pytest.approx(100.0) for t in list(ap)[:-1])
    assert ap[0.95] == pytest.approx(100 * 51 / 101)


def test_ap_by_iou_tool_reads_a_runs_saved_detections(tmp_path):
    import importlib.util
    import json
    import os

    from detectron2.config import get_cfg
    from detectron2.data.datasets import register_coco_instances

    from retina_plugin.config import add_retina_config

    spec = importlib.util.spec_from_file_location(
        "ap_by_iou", os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "ap_by_iou.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    coco, results = exact_and_loose_results()
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    register_coco_instances("ap_by_iou_gt", {}, str(tmp_path / "gt.json"), str(tmp_path))
    run = tmp_path / "run"
    (run / "inference").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no config.yaml. Give the OUTPUT_DIR of a train_net.py run"):
        tool.main([str(run)])
    cfg = get_cfg()
    add_retina_config(cfg)
    cfg.DATASETS.TEST = ("ap_by_iou_gt",)
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SEED = 90, (60, 80), 3
    (run / "config.yaml").write_text(cfg.dump())
    # COCOEvaluator's own file: per image, its detections with contiguous class ids.
    torch.save([{"image_id": r["image_id"], "instances": [dict(r, category_id=0)]} for r in results],
               run / "inference" / "instances_predictions.pth")
    (run / "metrics.json").write_text(json.dumps({"iteration": 59, "bbox/AP": 1.0}) + "\n"
                                      + json.dumps({"iteration": 89, "bbox/AP": 95.0}) + "\n"
                                      + json.dumps({"iteration": 89, "loss_cls": 0.1}) + "\n")
    table = tmp_path / "table.md"
    tool.main([str(run), "--output", str(table)])
    name = "FL gamma 2, alpha 0.25, no clipping, 90 iterations (steps 60,80), seed 3"
    ap_row, localisation_row = [line for line in table.read_text().splitlines() if line.startswith(f"| {name} |")]
    assert ap_row.startswith(f"| {name} | 89 | 95.0 |") and ap_row.endswith("| 100.0 | 50.5 |")
    assert localisation_row.startswith(f"| {name} | {len(coco['annotations'])} | ")

    # Above 0.6 only the exact boxes are left: precision 1 up to recall 0.5 at every IoU.
    tool.main([str(run), "--output", str(table), "--score-above", "0.6"])
    assert "`python tools/ap_by_iou.py " + str(run) + " --score-above 0.6`" in table.read_text()
    ap_row = [line for line in table.read_text().splitlines() if line.startswith(f"| {name} |")][0]
    assert ap_row.startswith(f"| {name} | 89 | 50.5 | 50.5 |") and ap_row.endswith("| 50.5 | 50.5 |")
    # Below the run's own threshold (SCORE_THRESH_TEST 0.05) the saved file lacks the detections.
    with pytest.raises(SystemExit, match="evaluated at score threshold 0.05.*needs the weights"):
        tool.main([str(run), "--score-above", "0.01"])


def test_first_ranked_localisation_separates_the_boxes_from_their_ranking():
    from detectron2.structures import BoxMode

    from retina_plugin.evaluation import first_ranked_localisation

    xyxy = BoxMode.XYXY_ABS
    images = [
        {"image_id": 1, "annotations": [
            {"bbox": [0, 0, 10, 10], "bbox_mode": xyxy, "category_id": 0},      # a: two boxes of its class
            {"bbox": [50, 50, 60, 60], "bbox_mode": xyxy, "category_id": 1},    # b: only a box of another class
            {"bbox": [0, 0, 10, 10], "bbox_mode": xyxy, "category_id": 0, "iscrowd": 1},  # not an object
        ]},
        {"image_id": 2, "annotations": [{"bbox": [0, 0, 20, 20], "bbox_mode": xyxy, "category_id": 0}]},  # c: no detection
        {"image_id": 3, "annotations": []},
    ]
    predictions = [{"image_id": 1, "instances": [
        {"image_id": 1, "category_id": 0, "bbox": [0, 0, 10, 8], "score": 0.9},    # a at IoU 0.8, first
        {"image_id": 1, "category_id": 0, "bbox": [0, 0, 10, 9.5], "score": 0.5},  # a at IoU 0.95
        {"image_id": 1, "category_id": 0, "bbox": [50, 50, 10, 10], "score": 0.99},  # on b, wrong class
    ]}]
    found = first_ranked_localisation(images, predictions)
    assert found["objects"] == 3
    # a has a box at 0.95 but ranks the one at 0.8 first; b and c have none of their class.
    assert found["best"] == pytest.approx({0.5: 100 / 3, 0.75: 100 / 3, 0.9: 100 / 3})
    assert found["first"] == pytest.approx({0.5: 100 / 3, 0.75: 100 / 3, 0.9: 0.0})
    assert found["mean_best"] == pytest.approx(0.95 / 3) and found["mean_first"] == pytest.approx(0.8 / 3)
    assert found["score_iou_rank_correlation"] != found["score_iou_rank_correlation"]  # one box: no correlation
    # Ranked the other way, the first box is the best one.
    predictions[0]["instances"][1]["score"] = 0.95
    assert first_ranked_localisation(images, predictions)["first"][0.9] == pytest.approx(100 / 3)


def test_rank_correlation_of_score_and_iou_says_whether_better_boxes_score_higher():
    from detectron2.structures import BoxMode

    from retina_plugin.evaluation import first_ranked_localisation

    # Four objects, each with one box of height 10 * IoU; scored in the order of their IoU, then against it.
    ious = [0.6, 0.7, 0.8, 0.9]
    images = [{"image_id": i, "annotations": [{"bbox": [0, 0, 10, 10], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}]}
              for i in range(len(ious))]
    for scores, rho in (([0.2, 0.4, 0.6, 0.8], 1.0), ([0.8, 0.6, 0.4, 0.2], -1.0)):
        predictions = [{"image_id": i, "instances": [{"image_id": i, "category_id": 0, "bbox": [0, 0, 10, 10 * iou], "score": score}]}
                       for i, (iou, score) in enumerate(zip(ious, scores))]
        found = first_ranked_localisation(images, predictions)
        assert found["score_iou_rank_correlation"] == pytest.approx(rho)
        assert found["mean_first"] == pytest.approx(sum(ious) / 4)


def test_detections_scoring_above_a_threshold_are_what_inference_at_it_saves():
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json
    from detectron2.modeling import build_model

    from retina_plugin.saved_detections import detections_scoring_above
    from helpers import tiny_batch, tiny_cfg

    cfg = tiny_cfg()
    cfg.MODEL.RETINANET.PRIOR_PROB = 0.04  # the untrained classifier scores from 0.01 to 0.27 here
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.max_detections_per_image = 100
    batch = [{k: v for k, v in record.items() if k != "instances"} for record in tiny_batch(seed=1)]

    def saved_at(score_thresh):
        model.test_score_thresh = score_thresh
        with torch.no_grad():
            outputs = model(batch)
        return [{"image_id": i, "instances": instances_to_coco_json(out["instances"], i)} for i, out in enumerate(outputs)]

    # At 0.12 the cap of 100 cuts detections, but only ones below 0.15: the filter is still exact.
    low, high = saved_at(0.12), saved_at(0.15)
    assert all(0 < len(h["instances"]) < len(lo["instances"]) == 100 for lo, h in zip(low, high))
    assert detections_scoring_above(low, 0.15, max_per_image=100) == high
    # A cap every kept box scored above: detections above the threshold may have been dropped.
    with pytest.raises(ValueError, match="reach TEST.DETECTIONS_PER_IMAGE .* evaluate the weights at that threshold"):
        detections_scoring_above(high, 0.01, max_per_image=min(len(h["instances"]) for h in high))


def test_tied_scores_ordered_by_fit_give_about_the_most_ap_the_ties_can(tmp_path, capsys):
    import importlib.util
    import json
    import os
    import shutil

    from detectron2.config import get_cfg
    from detectron2.data.datasets import register_coco_instances

    from retina_plugin.config import add_retina_config
    from retina_plugin.saved_detections import tied_detections

    spec = importlib.util.spec_from_file_location(
        "tied_scores", os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "tied_scores.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    # One 40 x 40 object per image, two detections of it at the same score 1: a loose box
    # (IoU 40 / 50 = 0.8) saved first, then an exact one.
    coco, predictions = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "c1"}]}, []
    for image_id in range(1, 11):
        coco["images"].append({"id": image_id, "width": 100, "height": 100, "file_name": f"{image_id}.png"})
        coco["annotations"].append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [20, 20, 40, 40],
                                    "area": 1600, "iscrowd": 0})
        predictions.append({"image_id": image_id, "instances": [
            {"image_id": image_id, "category_id": 0, "bbox": [20, 20, 50, 40], "score": 1.0},
            {"image_id": image_id, "category_id": 0, "bbox": [20, 20, 40, 40], "score": 1.0}]})
    predictions[0]["instances"].append({"image_id": 1, "category_id": 0, "bbox": [60, 60, 10, 10], "score": 0.5})
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    register_coco_instances("tied_scores_gt", {}, str(tmp_path / "gt.json"), str(tmp_path))
    run = tmp_path / "run"
    (run / "inference").mkdir(parents=True)
    cfg = get_cfg()
    add_retina_config(cfg)
    cfg.DATASETS.TEST = ("tied_scores_gt",)
    (run / "config.yaml").write_text(cfg.dump())
    torch.save(predictions, run / "inference" / "instances_predictions.pth")

    assert tied_detections(predictions) == 20  # the lone 0.5 shares its score with none
    (name, found), = tool.main([str(run), "--output", str(tmp_path / "table.md")])
    assert (found["detections"], found["tied"]) == (21, 20)
    # As saved, the loose box comes first: above IoU 0.8 it is a false positive before each
    # exact box (precision 0.5); at or below it the exact box is a duplicate after it, and the
    # ties across images interleave them (precision k / (2k - 1) at the k-th object).
    assert found["saved"][1] == pytest.approx(50.0, abs=0.01)
    assert 50 < found["saved"][0] < 60
    assert found["by_fit"] == pytest.approx((100.0, 100.0), abs=0.01)  # every exact box first
    table = (tmp_path / "table.md").read_text()
    assert f"| 21 | 20 | {found['saved'][0]:.2f} (50.0) | 100.00 (100.0) |" in table
    # A run that saved no detection (a diverged one) is left out with a line saying so.
    empty = tmp_path / "empty"
    shutil.copytree(run, empty)
    torch.save([dict(p, instances=[]) for p in predictions], empty / "inference" / "instances_predictions.pth")
    assert [name for name, _ in tool.main([str(empty), str(run)])] == [name]
    assert "saved no detections" in capsys.readouterr().out
