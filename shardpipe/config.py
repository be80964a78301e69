"""Build a dataset and loader from a YAML (or dict) pipeline configuration.

```yaml
dataset:   {urls: data/train/manifest.json, shuffle: 5000, batch_size: 256, num_threads: 2}
transform: [{RandomResizedCrop: {size: 224}}, {RandomHorizontalFlip: {}}]
# progressive resizing: {RandomResizedCrop: {size: {ramp: {start: 160, end: 224, end_epoch: 30}}}}
loader:    {num_workers: 8, pin_memory: true}
```

Transform names are looked up in ``shardpipe.augment`` only: a config cannot import or
run arbitrary code. A config that cannot be built as written raises ``ConfigError`` (a ``ValueError``)
naming the file, the key and its line: unknown sections and keys (with the close name), a key given
twice, a section of the wrong shape, a value its option refuses. Relative paths (``urls``, ``cache_dir``)
are taken from the current directory, as ``ShardDataset`` takes them, not from the config file's folder.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

import shardpipe.augment as augment
from shardpipe.configfile import ConfigError, check_keys, check_shape, read_config, where, yaml11_word
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
        kwargs = kwargs or {}
        allowed = [p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")]
        check_keys(kwargs, allowed, f"the arguments of transform {name}")
        with _naming(kwargs, f"transform {name}", where(item, name) if isinstance(item, dict) else "config"):
            steps.append(cls(**{k: _value(v) for k, v in kwargs.items()}))
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
    config = source if isinstance(source, dict) else read_config(source)
    check_shape(config)
    shared = config.get("dataset") or {}
    ds_args = {**shared, **dataset_overrides}
    with _naming({}, "transform", where(config, "transform")):
        transform = build_transform(config.get("transform"))
    if config.get("mix") is not None:
        dataset: ShardDataset | MixedDataset = _mixed(config["mix"], ds_args, transform, shared, where(config, "mix"))
    else:
        if "urls" not in ds_args:
            raise ConfigError(
                f"{where(config, 'dataset')}: config needs dataset.urls (a shard pattern, list or manifest.json)"
            )
        urls = ds_args.pop("urls")
        with _naming(shared, "dataset", where(config, "dataset")):
            dataset = ShardDataset(urls, transform=transform, **ds_args)
    loader = config.get("loader") or {}
    check_keys(loader, LOADER_KEYS, "loader")
    with _naming(loader, "loader", where(config, "loader")):
        return dataset, ShardLoader(dataset, **loader)


#: what a ``loader:`` section may hold: ShardLoader's arguments and the DataLoader's it passes on
LOADER_KEYS = sorted(
    {*inspect.signature(ShardLoader.__init__).parameters, *inspect.signature(DataLoader.__init__).parameters}
    - {"self", "dataset", "kwargs"}
)


@contextmanager
def _naming(mapping: Any, what: str, at: str) -> Iterator[None]:
    """Re-raise a TypeError or ValueError of building ``what`` from ``mapping`` as a ``ConfigError`` naming
    the file and the line of the key its message starts with or quotes, else ``at`` (where ``what`` begins)."""
    try:
        yield
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        text = str(e)
        key = next((k for k in mapping if text.startswith(f"{k} ") or f"{k!r}" in text or f"{k}=" in text), None)
        if key is None:
            raise ConfigError(f"{at}: {what}: {text}") from e
        raise ConfigError(f"{where(mapping, key)}: {what}: {text}{yaml11_word(mapping, key)}") from e


#: what a ``mix:`` section may hold besides ``sources``
MIX_KEYS = sorted({"sources", *inspect.signature(MixedDataset.__init__).parameters} - {"self", "datasets", "weights"})


def _mixed(
    mix: dict[str, Any], ds_args: dict[str, Any], transform: Any, shared: dict[str, Any], at: str
) -> MixedDataset:
    check_keys(mix, MIX_KEYS, "mix")
    sources = mix.get("sources")
    if not sources or not isinstance(sources, list):
        raise ConfigError(f"{where(mix, 'sources')}: config mix: needs sources: a list of {{urls: ..., weight: ...}}")
    if "urls" in ds_args:
        raise ConfigError(
            f"{where(shared, 'urls')}: with a mix: section, give urls per source (mix.sources[i].urls), not in dataset:"
        )
    datasets, weights = [], []
    for i, spec in enumerate(sources):
        if not isinstance(spec, dict) or "urls" not in spec or "weight" not in spec:
            got = sorted(spec) if isinstance(spec, dict) else repr(spec)
            raise ConfigError(f"{where(mix, 'sources')}: config mix.sources[{i}] needs urls and weight, got {got}")
        own = {k: v for k, v in spec.items() if k not in ("urls", "weight")}
        with _naming(spec, f"mix.sources[{i}]", where(spec, "urls")):
            datasets.append(ShardDataset(spec["urls"], transform=transform, **{**ds_args, **own}))
            weights.append(float(spec["weight"]))
    with _naming(mix, "mix", at):
        return MixedDataset(datasets, weights, **{k: v for k, v in mix.items() if k != "sources"})
