"""LazyConfig (.py) configs (configs/lazy/, retina_plugin/lazy.py): the same model as the
yaml configs, errors that name the key, and train_net.py running them."""
import os

import pytest
import torch

from detectron2.modeling import build_model

import retina_plugin
from retina_plugin import ConfigValueError
from retina_plugin.config import get_retina_cfg
from retina_plugin.lazy import build_lazy, load_lazy_config

from helpers import REPO, tiny_batch, train_step
from test_train_net import QUICK, run_train_net, write_own_dataset

LAZY = os.path.join(REPO, "configs", "lazy")


def lazy_model(name="quickstart.py", overrides=()):
    return build_lazy(load_lazy_config(os.path.join(LAZY, name), list(overrides)).model)


def test_yaml_and_lazy_quickstart_build_the_same_model():
    torch.manual_seed(0)
    yaml_model = build_model(get_retina_cfg(os.path.join(REPO, "configs", "quickstart.yaml")))
    lazy = lazy_model()
    yaml_state, lazy_state = yaml_model.state_dict(), lazy.state_dict()
    assert list(yaml_state) == list(lazy_state)
    assert all(yaml_state[k].shape == lazy_state[k].shape for k in yaml_state)
    # The prior initialisation of the class bias, from the loss, in both.
    assert torch.equal(yaml_state["head.cls_score.bias"], lazy_state["head.cls_score.bias"])
    lazy.load_state_dict(yaml_state)
    batch = tiny_batch(num_classes=6, sizes=((160, 160), (160, 128)))
    yaml_losses, yaml_grads, _ = train_step(yaml_model, batch)
    lazy_losses, lazy_grads, _ = train_step(lazy, batch)
    for name in ("loss_cls", "loss_box_reg"):
        assert yaml_losses[name].item() == pytest.approx(lazy_losses[name].item(), rel=1e-6), name
    assert all(torch.allclose(yaml_grads[k], lazy_grads[k], rtol=1e-4, atol=1e-7) for k in yaml_grads)


def test_paper_lazy_configs_build_and_a_loss_is_one_override():
    for name, depth_blocks in (("retina_r50.py", 16), ("retina_r101.py", 33)):
        model = lazy_model(name, ["model.cls_loss.gamma=0", "model.cls_loss.alpha=0.75"])
        assert isinstance(model, retina_plugin.FocalRetinaNet) and isinstance(model.head, retina_plugin.RetinaHead)
        assert (model.cls_loss.alpha, model.cls_loss.gamma) == (0.75, 0.0)
        assert sum(1 for n, _ in model.backbone.bottom_up.named_children() if n.startswith("res")) == 4
        blocks = sum(len(getattr(model.backbone.bottom_up, f"res{i}")) for i in range(2, 6))
        assert blocks == depth_blocks
    # One _target_ swap: the head follows the loss (K + 1 logits with a softmax).
    softmax = lazy_model(overrides=["model.cls_loss._target_=retina_plugin.SoftmaxFocalLoss"])
    assert isinstance(softmax.cls_loss, retina_plugin.SoftmaxFocalLoss)
    assert softmax.head.cls_score.out_channels == 9 * 7 and softmax.num_logits == 7


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.cls_loss.gama=0", "model.cls_loss.gama is not allowed: FocalLoss takes no argument 'gama'; it takes alpha, gamma, impl, num_classes"),
        ("model.cls_loss.gamma=abc", "model.cls_loss (FocalLoss): MODEL.RETINANET.FOCAL_LOSS_GAMMA = 'abc' is not allowed"),
        ("model.cls_loss._target_=os.path.join", "model.cls_loss._target_ = 'join' is not allowed: use a subclass of retina_plugin.losses.build.ClassificationLoss"),
        ("model.head._target_=retina_plugin.nothing_here", "model.head._target_ = 'retina_plugin.nothing_here' is not allowed: it names nothing"),
        ("model.loss_normalizer=median", "model (FocalRetinaNet): MODEL.RETINANET.LOSS_NORMALIZER = 'median' is not allowed"),
        ("model.head.conv_dimz=[64]", "model.head.conv_dimz is not allowed: RetinaHead takes no argument 'conv_dimz'"),
    ],
)
def test_a_bad_lazy_config_names_the_key(override, message):
    with pytest.raises(ConfigValueError) as error:
        lazy_model(overrides=[override])
    assert message in str(error.value), str(error.value)


def test_a_bad_override_is_a_clear_error():
    with pytest.raises(ConfigValueError, match="do not apply"):
        load_lazy_config(os.path.join(LAZY, "quickstart.py"), ["model.cls_loss"])


@pytest.mark.slow
def test_train_net_trains_resumes_and_evaluates_a_lazy_config(tmp_path):
    data = write_own_dataset(tmp_path / "data", num_categories=3)
    out = tmp_path / "run"
    flags = [
        "--config-file", os.path.join(LAZY, "quickstart.py"),
        "--dataset", "lazy_train", str(data / "train.json"), str(data / "train"),
        "--dataset", "lazy_val", str(data / "val.json"), str(data / "val"),
    ]
    common = [
        "dataloader.train.dataset.names=lazy_train", "dataloader.test.dataset.names=lazy_val",
        "dataloader.train.total_batch_size=2", "train.seed=0", f"train.output_dir={out}",
        "model.test_score_thresh=0.0",
    ]
    log = run_train_net([*flags, *common, "train.max_iter=2"], tmp_path)
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    # NUM_CLASSES came from the json (3 classes, 9 anchors), the normaliser's state was saved.
    assert state["model"]["head.cls_score.weight"].shape[0] == 3 * 9
    assert "loss_normalizer" in state and state["iteration"] == 1
    log = run_train_net([*flags, "--resume", *common, "train.max_iter=4"], tmp_path)
    assert "Resuming from" in log or "Loading from" in log
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == 3
    log = run_train_net(
        [*flags, "--eval-only", *common, f"train.init_checkpoint={out / 'model_final.pth'}",
         f"train.output_dir={tmp_path / 'eval'}"], tmp_path,
    )
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log and "Starting training" not in log


def test_a_lazy_train_loader_continues_detectron2s_sampler_stream(tmp_path):
    import itertools

    from detectron2.data.samplers import TrainingSampler

    from retina_plugin.data import register_coco_dataset
    from retina_plugin.data.sampler import ResumableTrainingSampler, instantiate_resumable_train_loader

    data = write_own_dataset(tmp_path / "data", num_categories=3)
    register_coco_dataset("lazy_sampler_train", str(data / "train.json"), str(data / "train"))
    cfg = load_lazy_config(os.path.join(LAZY, "quickstart.py"), ["dataloader.train.dataset.names=lazy_sampler_train",
                                                                  "dataloader.train.total_batch_size=2"])
    loader = instantiate_resumable_train_loader(cfg.dataloader.train)
    sampler = loader.resumable_sampler
    assert isinstance(sampler, ResumableTrainingSampler) and sampler._size == 3
    plain = TrainingSampler(3, seed=sampler._seed)
    sampler.start = 5
    assert list(itertools.islice(iter(sampler), 7)) == list(itertools.islice(iter(plain), 5, 12))
    # A config with a sampler of its own keeps it.
    cfg.dataloader.train.sampler = TrainingSampler(3, seed=1)
    assert instantiate_resumable_train_loader(cfg.dataloader.train).resumable_sampler is None
