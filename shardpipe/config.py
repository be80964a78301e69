"""Build a dataset and loader from a YAML (or dict) pipeline configuration.

```yaml
dataset:   {urls: data/train/manifest.json, shuffle: 5000, batch_size: 256, num_threads: 2}
transform: [{RandomResizedCrop: {size: 224}}, {RandomHorizontalFlip: {}}]
# progressive resizing: {RandomResizedCrop: {size: {ramp: {start: 160, end: 224, end_epoch: 30}}}}
loader:    {num_workers: 8, pin_memory: true}
```

Transform names are looked up in ``shardpipe.augment`` only: a config cannot import or
run arbitrary code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

import shardpipe.augment as augment
from shardpipe.dataset import ShardDataset
from shardpipe.loader import ShardLoader
from shardpipe.mix import MixedDataset


def build_transform(spec: list[Any] | None) -> augment.Transform | None:
    """``[{"Name": {kwargs}}, "Name", ...]`` -> a ``Compose`` of ``shardpipe.augment`` transforms."""
    if not spec:
        return None
    steps = []
    for item in spec:
        name, kwargs = (item, {}) if isinstance(item, str) else next(iter(item.items()))
        cls = getattr(augment, name, None)
        if not (isinstance(cls, type) and issubclass(cls, augment.Transform)):
            raise ValueError(f"unknown transform {name!r} in config; available: {', '.join(augment_names())}")
        steps.append(cls(**{k: _value(v) for k, v in (kwargs or {}).items()}))
    return augment.Compose(steps)


def _value(v: Any) -> Any:
    """YAML lists become tuples; ``{ramp: {start: 160, end: 224, end_epoch: 30}}`` a size schedule."""
    if isinstance(v, list):
        return tuple(v)
    if isinstance(v, dict) and set(v) == {"ramp"}:
        if not isinstance(v["ramp"], dict):
            raise ValueError(f"a ramp is a mapping, as {{ramp: {{start: 160, end: 224, end_epoch: 30}}}}; got {v!r}")
        return augment.ramp(**v["ramp"])
    return v


def augment_names() -> list[str]:
    return sorted(
        n
        for n in dir(augment)
        if isinstance(getattr(augment, n), type) and issubclass(getattr(augment, n), augment.Transform)
    )


def load_config(
    source: str | Path | dict[str, Any], **dataset_overrides: Any
) -> tuple[ShardDataset | MixedDataset, ShardLoader]:
    """Read a config (path or dict) and return ``(dataset, loader)``; keyword args override ``dataset:``.

    A ``mix:`` section builds a ``MixedDataset``: ``dataset:`` then holds the options every
    source shares, each of ``mix.sources`` its ``urls``, ``weight`` and its own overrides::

        dataset: {shuffle: 1000, num_threads: 2}
        mix:
          samples_per_epoch: 100000
          batch_size: 256
          sources:
            - {urls: a/manifest.json, weight: 0.7}
            - {urls: b/manifest.json, weight: 0.3, shuffle: 500}
    """
    config = source if isinstance(source, dict) else yaml.safe_load(Path(source).read_text())
    unknown = set(config) - {"dataset", "transform", "loader", "mix"}
    if unknown:
        raise ValueError(f"unknown config sections: {sorted(unknown)} (expected dataset, transform, loader, mix)")
    ds_args = {**config.get("dataset", {}), **dataset_overrides}
    transform = build_transform(config.get("transform"))
    if "mix" in config:
        dataset: ShardDataset | MixedDataset = _mixed(config["mix"], ds_args, transform)
    else:
        if "urls" not in ds_args:
            raise ValueError("config needs dataset.urls (a shard pattern, list or manifest.json)")
        urls = ds_args.pop("urls")
        dataset = ShardDataset(urls, transform=transform, **ds_args)
    return dataset, ShardLoader(dataset, **config.get("loader", {}))


def _mixed(mix: dict[str, Any], shared: dict[str, Any], transform: Any) -> MixedDataset:
    mix = dict(mix)
    sources = mix.pop("sources", None)
    if not sources:
        raise ValueError("config mix: needs sources: a list of {urls: ..., weight: ...}")
    if "urls" in shared:
        raise ValueError("with a mix: section, give urls per source (mix.sources[i].urls), not in dataset:")
    datasets, weights = [], []
    for i, spec in enumerate(sources):
        spec = dict(spec)
        if "urls" not in spec or "weight" not in spec:
            raise ValueError(f"config mix.sources[{i}] needs urls and weight, got {sorted(spec)}")
        urls, weights_i = spec.pop("urls"), spec.pop("weight")
        datasets.append(ShardDataset(urls, transform=transform, **{**shared, **spec}))
        weights.append(float(weights_i))
    return MixedDataset(datasets, weights, **mix)
