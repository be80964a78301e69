"""Reading a pipeline config file (``shardpipe.config``, ``shardpipe serve``): YAML that keeps where each
key was written, so that an error names the file, the key and its line.

A key given twice in one mapping is an error (plain YAML loading keeps the last quietly); YAML's merge
keys (``<<: *base``) still fill in keys, and a key written beside them overrides theirs, as YAML says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: sections of a config, and the YAML shape each holds
SECTIONS = {"dataset": "mapping", "transform": "list", "loader": "mapping", "mix": "mapping"}


class ConfigError(ValueError):
    """A config that cannot be built as written: the message names the file, the key and its line."""


class Lined(dict):
    """A mapping read from YAML: ``lines[key]`` is the line (from 1) its key was written on, ``source`` the file."""

    lines: dict[Any, int]
    source: str
    #: keys whose value was a YAML 1.1 boolean word (``off``, ``no``, ``yes``, ``on``), with that word
    words: dict[Any, str]


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings are ``Lined`` and refuse a key given twice."""

    def construct_lined(self, node: yaml.MappingNode) -> Lined:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys may be overridden: only this mapping's own keys count
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.source}, line {line}: key {key!r} given twice (first on line {seen[key]})")
            seen[key] = line
        self.flatten_mapping(node)  # merge keys (<<) become ordinary pairs, the merged ones first
        out = Lined()
        out.lines, out.source, out.words = {}, self.source, {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            out[key] = self.construct_object(value_node, deep=True)
            out.lines[key] = seen.get(key, key_node.start_mark.line + 1)
            if value_node.tag == "tag:yaml.org,2002:bool" and value_node.value.lower() not in ("true", "false"):
                out.words[key] = value_node.value
        return out


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_lined)


def read_config(path: str | Path) -> Lined:
    """The config in file ``path``: a mapping of sections (``SECTIONS``), checked for its shape."""
    with open(path, encoding="utf-8") as f:
        loader = _Loader(f)  # errors in the YAML itself name the file too ('in "train.yaml", line 3')
        loader.source = str(path)
        try:
            config = loader.get_single_data()
        finally:
            loader.dispose()
    if config is None:
        raise ConfigError(f"{path}: the file is empty; a config is a mapping of sections ({', '.join(SECTIONS)})")
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections ({', '.join(SECTIONS)}), not {_kind(config)}")
    return config


def check_shape(config: dict[str, Any]) -> None:
    """Refuse unknown sections and sections of the wrong YAML shape, naming the file and line."""
    for key in config:
        if key not in SECTIONS:
            raise ConfigError(f"{where(config, key)}: unknown section {key!r}{close_to(key, SECTIONS)}")
    for name, shape in SECTIONS.items():
        value = config.get(name)
        if value is not None and not isinstance(value, dict if shape == "mapping" else list):
            raise ConfigError(f"{where(config, name)}: section {name} is a {shape}, not {_kind(value)}")
    for i, item in enumerate(config.get("transform") or ()):
        if isinstance(item, dict) and len(item) > 1:  # only the first was built: the others were dropped
            names = ", ".join(map(str, item))
            raise ConfigError(f"{where(item, next(iter(item)))}: transform[{i}] names {len(item)} transforms "
                              f"({names}): give each its own list item")  # fmt: skip
        if not (isinstance(item, str) or (isinstance(item, dict) and item)):
            raise ConfigError(f"{where(config, 'transform')}: transform[{i}] is a name or {{Name: {{arguments}}}}, "
                              f"not {_kind(item)}")  # fmt: skip
        if isinstance(item, dict):
            ((name, kwargs),) = item.items()
            if kwargs is not None and not isinstance(kwargs, dict):
                raise ConfigError(f"{where(item, name)}: the arguments of transform {name} are a mapping "
                                  f"({{size: 224}}), not {_kind(kwargs)}")  # fmt: skip


def check_keys(section: dict[str, Any], allowed: list[str], name: str) -> None:
    """Refuse a key of ``section`` that is not in ``allowed``, with the close name if there is one."""
    for key in section:
        if key not in allowed:
            raise ConfigError(f"{where(section, key)}: unknown key {key!r} in {name}{close_to(key, allowed)}")


def close_to(key: Any, names: Any) -> str:
    """``"; did you mean 'x'?"`` for the name closest to ``key``, or a list of the names."""
    import difflib

    near = difflib.get_close_matches(str(key), list(names), n=1)
    return f"; did you mean {near[0]!r}?" if near else f" (expected one of: {', '.join(names)})"


def where(mapping: Any, key: Any) -> str:
    """``"train.yaml, line 4"`` for a key of a mapping read from a file; ``"config"`` for a plain dict."""
    source = getattr(mapping, "source", "config")
    line = getattr(mapping, "lines", {}).get(key)
    return f"{source}, line {line}" if line else source


def yaml11_word(mapping: Any, key: Any) -> str:
    """``" (YAML reads an unquoted off as false: ...)"`` when ``key``'s value was such a word, else ``""``."""
    word = getattr(mapping, "words", {}).get(key)
    if word is None:
        return ""
    return f" (YAML reads an unquoted {word} as {str(mapping[key]).lower()}: write '{word}' in quotes for the word)"


def _kind(value: Any) -> str:
    """How a YAML value reads in an error: ``a list [...]``, ``the string 'x'``, ``null``."""
    if value is None:
        return "null (empty)"
    if isinstance(value, list):
        return f"a list {value!r:.60}"
    if isinstance(value, str):
        return f"the string {value!r:.60}"
    if isinstance(value, dict):
        return f"a mapping {dict(value)!r:.60}"
    return f"{type(value).__name__} {value!r:.60}"
