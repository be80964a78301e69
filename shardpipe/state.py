"""Resume states: their one version number, their structure, and the check run before any of one is used.

A resume state is small JSON that a user (or a fleet client) hands back; nothing in it is
believed without a check. The check has two parts:

* the shape, here: known keys only, integers that are integers (``True`` is not ``1``),
  non-negative and bounded, nesting bounded (``check_json``);
* the plan, per stage: each ``Stage`` lists its fields (``state_fields``) and may check
  them against the epoch plan it computes (``check_state``), e.g. the shard being read
  must be the one the plan gave there, and its byte offset must lie inside the shard.
  A state names a shard by its place in the plan; the URL it carries is only compared.

Every mismatch is a ``StateError`` whose message starts with the field's path:
``state['stages']['source']['shard']['offset']: must be >= 0, got -5``.

Entry points, one per kind of state: ``validate_pipeline_state`` (a ``Pipeline``'s own
state, checked against that pipeline), ``validate_dataset_state`` (``ShardDataset``),
``validate_mixed_state`` (``MixedDataset``), ``validate_loader_state`` (``ShardLoader``) and
``validate_remote_state`` (``RemoteLoader``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

from shardpipe.errors import StateError

#: the version of every resume state this shardpipe writes and reads
STATE_VERSION = 1
State = dict[str, Any]

#: no state nests deeper than this (a pipeline is a handful of stages; a loader adds three levels)
MAX_DEPTH = 48
#: nor holds more values in all
MAX_VALUES = 1 << 20
#: integers in a state (positions, epochs, offsets) stay below this
MAX_INT = 1 << 62
#: strings in a state (sample keys, URLs, fingerprints) stay shorter than this
MAX_STR = 1 << 16

# field kinds a stage can declare in ``state_fields``
COUNT = "count"  #: a non-negative integer
SOURCE = "source"  #: the source stage's state (or None: the source starts afresh)
OPTIONAL = "optional"  #: a stage-specific value checked by the stage itself; may be absent


class StateCheck:
    """A position inside a state (its path), with the checks that raise ``StateError`` there."""

    def __init__(self, path: str = "state"):
        self.path = path

    def at(self, key: str | int) -> StateCheck:
        return StateCheck(f"{self.path}[{key!r}]")

    def fail(self, message: str) -> NoReturn:
        raise StateError(f"{self.path}: {message}")

    def mapping(self, value: Any, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, Any]:
        """``value`` as a dict with every ``required`` key and no key outside ``required + optional``."""
        if not isinstance(value, dict):
            self.fail(f"must be an object (dict), got {_kind(value)}")
        missing = [k for k in required if k not in value]
        if missing:
            self.fail(f"missing key(s) {', '.join(map(repr, missing))}")
        unknown = [k for k in value if k not in required and k not in optional]
        if unknown:
            self.fail(f"unknown key(s) {', '.join(repr(k)[:60] for k in unknown[:5])}")
        return value

    def integer(self, value: Any, lo: int = 0, hi: int = MAX_INT, what: str = "") -> int:
        """``value`` as an int in ``[lo, hi]`` (a bool is not an int)."""
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(f"must be an integer, got {_kind(value)}")
        if value < lo:
            self.fail(f"must be >= {lo}, got {value}")
        if value > hi:
            self.fail(f"must be <= {hi}{what}, got {value}")
        return value

    def boolean(self, value: Any) -> bool:
        if not isinstance(value, bool):
            self.fail(f"must be true or false, got {_kind(value)}")
        return value

    def string(self, value: Any, none: bool = False, max_len: int = MAX_STR) -> str | None:
        if value is None and none:
            return None
        if not isinstance(value, str):
            self.fail(f"must be a string{' or null' if none else ''}, got {_kind(value)}")
        if len(value) > max_len:
            self.fail(f"is {len(value)} characters long, over the limit of {max_len}")
        return value

    def sequence(self, value: Any, length: int | None = None) -> list[Any]:
        if not isinstance(value, list):
            self.fail(f"must be a list, got {_kind(value)}")
        if length is not None and len(value) != length:
            self.fail(f"must have {length} entries, got {len(value)}")
        return value

    def equal(self, value: Any, expected: Any, what: str) -> None:
        if value != expected or type(value) is not type(expected):
            self.fail(f"is {_show(value)}, but {what} is {_show(expected)}")


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {_show(value)}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_json(value: Any, check: StateCheck | None = None) -> None:
    """Refuse anything but JSON types, nesting deeper than ``MAX_DEPTH`` or more than ``MAX_VALUES``
    values (an iterative walk: no recursion to exhaust)."""
    check = check or StateCheck()
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            check.fail(f"holds more than {MAX_VALUES} values")
        if depth > MAX_DEPTH:
            check.fail(f"nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    check.fail(f"has a key of type {type(k).__name__} (keys are strings)")
                stack.append((v, depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            if len(item) > MAX_STR:
                check.fail(f"holds a string of {len(item)} characters, over the limit of {MAX_STR}")
        elif item is not None and not isinstance(item, (bool, int, float)):
            check.fail(f"holds a {type(item).__name__}, which is not a JSON value")


def check_version(state: Any, check: StateCheck, what: str) -> None:
    """The version first: a state from another release is named as such, not by its first odd field."""
    if not isinstance(state, dict):
        check.fail(f"must be an object (dict), got {_kind(state)}")
    version = state.get("version")
    if version != STATE_VERSION or isinstance(version, bool):
        raise StateError(
            f"{check.at('version').path}: {what} state has version {version!r}; this shardpipe reads {STATE_VERSION}"
        )


# -- a pipeline's own state ---------------------------------------------------------------
PIPELINE_KEYS = ("version", "epoch", "stages")


def pipeline_shape(state: Any, check: StateCheck, what: str = "pipeline") -> dict[str, Any]:
    """The top of a ``Pipeline.get_state()`` (version, epoch, stages), without the stages' fields."""
    check_json(state, check)
    check_version(state, check, what)
    check.mapping(state, PIPELINE_KEYS, ("consumer", "fingerprint"))  # the last two: a dataset's
    check.at("epoch").integer(state["epoch"])
    if state["stages"] is not None and not isinstance(state["stages"], dict):
        check.at("stages").fail(f"must be an object (dict) or null, got {_kind(state['stages'])}")
    if state.get("consumer") is not None:
        _consumer(state["consumer"], check.at("consumer"))
    check.at("fingerprint").string(state.get("fingerprint"), none=True, max_len=128)
    return state


def validate_pipeline_state(state: Any, pipeline: Any, check: StateCheck | None = None) -> None:
    """Check ``state`` against ``pipeline`` (a ``stages.base.Pipeline``): every stage's fields,
    and what each stage can check against its plan for the state's epoch."""
    check = check or StateCheck()
    pipeline_shape(state, check)
    if state["stages"] is None:
        return
    # walk down the chain: the last stage's state nests its source's under "source"
    levels: list[tuple[Any, Any, StateCheck]] = []
    stage, sub, here = pipeline.stages[-1], state["stages"], check.at("stages")
    while stage is not None:
        fields = stage_fields(stage)
        required = [k for k, kind in fields.items() if kind != OPTIONAL]
        optional = [k for k, kind in fields.items() if kind == OPTIONAL]
        here.mapping(sub, required, optional)
        for key, kind in fields.items():
            if kind == COUNT:
                here.at(key).integer(sub[key])
        levels.append((stage, sub, here))
        source_key = next((k for k, kind in fields.items() if kind == SOURCE), None)
        if source_key is None or sub[source_key] is None:
            break
        stage, sub, here = stage.source, sub[source_key], here.at(source_key)
        if stage is None:
            here.fail("this pipeline has no stage before this one")
    saved_epoch = pipeline.ctx.epoch
    pipeline.ctx.epoch = state["epoch"]
    try:
        below: Any = None  # what the stage under this one passes up (e.g. the shard it gave last)
        for stage, sub, here in reversed(levels):
            below = stage.check_state(sub, here, below)
    finally:
        pipeline.ctx.epoch = saved_epoch


def stage_fields(stage: Any) -> dict[str, str]:
    """The fields a stage's state holds: its own ``state_fields``, plus ``source`` for stages with a source."""
    fields = dict(getattr(stage, "state_fields", {}))
    if stage.source is not None and not any(kind == SOURCE for kind in fields.values()):
        fields["source"] = SOURCE
    return fields


# -- the loaders' states --------------------------------------------------------------------
def _consumer(value: Any, check: StateCheck) -> None:
    c = check.mapping(value, ("rank", "world_size", "worker", "num_workers"))
    world = check.at("world_size").integer(c["world_size"], 1)
    check.at("rank").integer(c["rank"], 0, world - 1, " (below world_size)")
    workers = check.at("num_workers").integer(c["num_workers"], 1)
    check.at("worker").integer(c["worker"], 0, workers - 1, " (below num_workers)")


def validate_dataset_state(state: Any, check: StateCheck | None = None) -> dict[str, Any]:
    """The shape of a ``ShardDataset.state_dict()``; its stages are checked against the pipeline
    when the pass starts (they depend on the consumer)."""
    return pipeline_shape(state, check or StateCheck(), "dataset")


def validate_mixed_state(state: Any, sources: int, check: StateCheck | None = None) -> dict[str, Any]:
    """The shape of a ``MixedDataset.state_dict()`` for ``sources`` sources (each source's pipeline
    state is checked against that source's pipeline when the pass starts)."""
    check = check or StateCheck()
    check_json(state, check)
    check_version(state, check, "mixed")
    check.mapping(state, ("version", "epoch", "drawn", "sources"), ("consumer", "fingerprint"))
    check.at("epoch").integer(state["epoch"])
    check.at("drawn").integer(state["drawn"])
    if state["sources"] is not None:
        for i, source in enumerate(check.at("sources").sequence(state["sources"], sources)):
            pipeline_shape(source, check.at("sources").at(i))
    if state.get("consumer") is not None:
        _consumer(state["consumer"], check.at("consumer"))
    check.at("fingerprint").string(state.get("fingerprint"), none=True, max_len=128)
    return state


def validate_loader_state(state: Any, check: StateCheck | None = None) -> dict[str, Any]:
    """The shape of a ``ShardLoader.state_dict()``; each worker's part is its dataset's state
    (``ShardDataset`` or ``MixedDataset``), checked by that dataset when a worker loads it."""
    check = check or StateCheck()
    check_json(state, check)
    keys = ("version", "fingerprint", "epoch", "rank", "world_size", "num_workers", "next_worker", "workers")
    check_version(state, check, "loader")
    check.mapping(state, keys)
    check.at("fingerprint").string(state["fingerprint"], max_len=128)
    check.at("epoch").integer(state["epoch"])
    world = check.at("world_size").integer(state["world_size"], 1)
    check.at("rank").integer(state["rank"], 0, world - 1, " (below world_size)")
    workers = check.at("num_workers").integer(state["num_workers"])
    check.at("next_worker").integer(state["next_worker"], 0, max(workers - 1, 0), " (below num_workers)")
    if state["workers"] is not None:
        for i, worker in enumerate(check.at("workers").sequence(state["workers"], max(workers, 1))):
            if worker is not None and not isinstance(worker, dict):  # checked by its dataset when loaded
                check.at("workers").at(i).fail(f"must be an object (dict) or null, got {_kind(worker)}")
    return state


def validate_remote_state(state: Any, check: StateCheck | None = None, max_parts: int = 4096) -> dict[str, Any]:
    """The shape of a ``RemoteLoader.state_dict()`` (each part's pipeline state is checked by the
    server that continues it, against its own configuration)."""
    check = check or StateCheck()
    check_json(state, check)
    keys = ("version", "fingerprint", "epoch", "rank", "world_size", "parts", "next_part", "states", "done")
    check_version(state, check, "remote loader")
    check.mapping(state, keys)
    check.at("fingerprint").string(state["fingerprint"], none=True, max_len=128)
    check.at("epoch").integer(state["epoch"])
    world = check.at("world_size").integer(state["world_size"], 1)
    check.at("rank").integer(state["rank"], 0, world - 1, " (below world_size)")
    if (state["states"] is None) != (state["done"] is None):
        check.fail("'states' and 'done' are both lists (mid-epoch) or both null")
    if state["states"] is None and state["parts"] is None:  # saved before the first pass
        check.at("next_part").integer(state["next_part"], 0, 0)
        return state
    parts = check.at("parts").integer(state["parts"], 1, max_parts)
    check.at("next_part").integer(state["next_part"], 0, parts - 1, " (below parts)")
    if state["states"] is not None:
        for i, part in enumerate(check.at("states").sequence(state["states"], parts)):
            if part is not None:
                pipeline_shape(part, check.at("states").at(i))
        for i, done in enumerate(check.at("done").sequence(state["done"], parts)):
            check.at("done").at(i).boolean(done)
    return state
