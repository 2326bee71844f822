"""SEED makes a CPU run of train_net.py reproducible: the same seed trains the same weights
with the same losses; another seed does not."""
import json
import os

import pytest
import torch

from helpers import REPO
from test_train_net import QUICK, run_train_net, write_own_dataset

pytestmark = pytest.mark.slow


def train(data, out, seed):
    run_train_net(
        [
            "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
            "--dataset", "seed_train", str(data / "train.json"), str(data / "train"),
            *QUICK, "SOLVER.MAX_ITER", "3", "DATASETS.TRAIN", '("seed_train",)', "DATASETS.TEST", "()",
            "SEED", str(seed), "OUTPUT_DIR", str(out),
        ],
        data,
    )
    losses = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = {k: v for record in losses for k, v in record.items() if k.startswith("loss") or k == "num_pos_anchors"}
    weights = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    return losses, weights


def test_same_seed_same_losses_and_weights_other_seed_not(tmp_path):
    data = write_own_dataset(tmp_path / "data", num_categories=3)
    losses_a, weights_a = train(data, tmp_path / "a", seed=7)
    losses_b, weights_b = train(data, tmp_path / "b", seed=7)
    losses_c, weights_c = train(data, tmp_path / "c", seed=8)
    assert "loss_cls" in losses_a and losses_a == losses_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert losses_a != losses_c
    assert not all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
