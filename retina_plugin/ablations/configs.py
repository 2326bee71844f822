"""
The config a run of a grid resolves to, as train_net.py resolves it, and which keys two runs'
configs differ in: what decides that a finished run can stand for another (--reuse-from), that
a run's config changed after it ran (a stale run), or that two runs differ only in their
schedule (prefix.py).
"""
import functools
from typing import Dict, List

# Where a run happens, not what it trains: a CPU fallback rewrites MODEL.DEVICE in config.yaml.
NOT_PART_OF_THE_RUN = ("OUTPUT_DIR", "MODEL.DEVICE")


def resolved_config(config_file, extra_configs=(), opts=(), datasets=()):
    """The config train_net.py resolves from a config file, extra configs, KEY VALUE opts and
    --dataset (name, json file, image root) triples (whose class count it takes, as train_net.py)."""
    from ..config import get_retina_cfg, merge_config_file, merge_config_list
    from ..data.custom import read_coco_categories, take_dataset_classes

    cfg = get_retina_cfg(config_file)
    for path in extra_configs:
        merge_config_file(cfg, path)
    merge_config_list(cfg, list(opts))
    own = {name: read_coco_categories(json_file, image_root) for name, json_file, image_root in datasets}
    return take_dataset_classes(cfg, own, opts)


@functools.lru_cache(maxsize=1)
def _default_keys() -> Dict[str, object]:
    """{flat key: default} of detectron2's config with the plugin's keys."""
    import yaml
    from detectron2.config import get_cfg

    from ..config import _flatten, add_retina_config

    return _flatten(yaml.safe_load(add_retina_config(get_cfg()).dump()))


def saved_config(config_file) -> Dict[str, object]:
    """A run's config.yaml as flat {"SOLVER.MAX_ITER": value, ...}."""
    import yaml

    from ..config import _flatten

    with open(config_file) as f:
        return _flatten(yaml.safe_load(f) or {})


def config_differences(config_file, cfg) -> List[str]:
    """The keys whose values differ between a run's config.yaml and `cfg`. A key the plugin
    added after that run (absent from its file) counts only if `cfg` moves it off its default."""
    import yaml

    from ..config import _flatten

    old = saved_config(config_file)
    new = _flatten(yaml.safe_load(cfg.dump()))
    defaults = _default_keys()
    return [
        key for key, value in new.items()
        if key not in NOT_PART_OF_THE_RUN and old.get(key, defaults.get(key)) != value
    ]
