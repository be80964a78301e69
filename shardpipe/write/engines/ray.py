"""The Ray engine: each output shard is one Ray task that reads, checks, presizes and writes it.

Tasks write straight to the destination (a local path every node sees, or ``s3://``,
``gs://``) through the same :func:`~shardpipe.write.plan.write_shard` as the local
engine, so the shards are byte-identical; they return only the manifest entry and the
skipped inputs, and the driver writes the manifest. A task whose worker dies (killed,
out of memory, node lost) or that fails with an I/O error is retried by Ray
(``MAX_RETRIES``); one that keeps failing stops the job with an error naming the shard
and its inputs. Shards already written are kept for ``--resume``.

Workers import shardpipe: on a cluster, install it on every node (or pass a Ray
``runtime_env``). Tasks run in the driver's working folder, so relative paths (source,
shards) mean what they mean to the driver (a cluster's workers start in their own).
``address=None`` joins the cluster named by ``RAY_ADDRESS`` or a ``ray start`` cluster
on this machine, else starts a local one for this job. A named address that nothing
answers at is an error within ``CONNECT_TIMEOUT`` seconds (Ray itself retries for many
minutes, printing only its own warnings).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ray

from shardpipe.write.plan import ShardJob, ShardResult, ShardTask, ShardTaskError, run_task

log = logging.getLogger("shardpipe")

MAX_RETRIES = 3  #: how often Ray reruns a task whose worker died or that raised an I/O error
CONNECT_TIMEOUT = 10.0  #: seconds a named cluster address has to accept a connection


def _named(address: str | None) -> tuple[str, str] | None:
    """The cluster address to join and who named it, as ``ray.init`` picks it (``RAY_ADDRESS`` wins
    over nothing and ``"auto"``); None when Ray finds a ``ray start`` cluster or starts one."""
    if address in (None, "auto") and os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    if address in (None, "auto", "local"):
        return None
    return address, "the Ray address given"


def check_answers(address: str | None) -> None:
    """Raise ``ConnectionError`` naming the address when no cluster accepts a connection there."""
    named = _named(address)
    if named is None:
        return
    addr, where = named
    host, _, port = addr.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        return  # not host:port: ray.init says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        fix = "unset RAY_ADDRESS" if where == "RAY_ADDRESS" else "leave the address out"
        raise ConnectionError(
            f"no Ray cluster answers at {addr} ({where}): {e.strerror or e}; start one there "
            f"(`ray start --head`), fix the address, or {fix} to run a local cluster for this job"
        ) from None


def connect(address: str | None) -> bool:
    """Join (or start) a Ray cluster unless this process already did; True when we did."""
    if ray.is_initialized():
        return False
    check_answers(address)
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": True}
    if address is None:
        kwargs["include_dashboard"] = False  # a local cluster for this job: no web server
    ray.init(**kwargs)
    return True


def _in_folder(folder: str, fn: Callable[..., Any], shared: Any, item: Any) -> Any:
    """``fn(shared, item)`` in the driver's working ``folder`` (a worker of a cluster started
    elsewhere runs in that node's folder, where relative paths name other files)."""
    if os.getcwd() != folder:
        try:
            os.chdir(folder)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"this Ray node has no folder {folder}, the driver's working folder that relative paths are read "
                "from: give absolute paths (or URLs) that every node sees"
            ) from None
    return fn(shared, item)


def ray_map(
    fn: Callable[..., Any], shared: Any, items: Iterable[Any], describe: Callable[[Any], str], window: int | None = None
) -> Iterator[tuple[Any, Any]]:
    """Run ``fn(shared, item)`` as a Ray task per item; yields ``(item, result)`` as tasks finish.

    ``shared`` goes into the object store once. At most ``window`` tasks are in flight
    (default: twice the cluster's CPUs), so a listing of millions of inputs is not all
    serialised at once. A task that fails after its retries raises :class:`ShardTaskError`.
    """
    remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=[OSError])(_in_folder)
    folder = os.getcwd()
    shared_ref = ray.put(shared)
    if window is None:
        window = max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))
    todo = iter(items)
    pending: dict[Any, Any] = {}

    def submit() -> None:
        item = next(todo, None)
        if item is not None:
            pending[remote.remote(folder, fn, shared_ref, item)] = item

    try:
        for _ in range(window):
            submit()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                item = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as e:
                    cause = str(e).strip().splitlines()
                    raise ShardTaskError(
                        f"{describe(item)} failed after {MAX_RETRIES} retries: {cause[-1] if cause else type(e).__name__}"
                    ) from e
                submit()
                yield item, result
    finally:
        for ref in pending:  # stop queued work; running tasks finish or are dropped with their temp files
            ray.cancel(ref)


def map_ray(
    fn: Callable[..., Any],
    shared: Any,
    items: Iterable[Any],
    describe: Callable[[Any], str],
    address: str | None = None,
) -> Iterator[tuple[Any, Any]]:
    """:func:`ray_map` on the cluster at ``address`` (joined or started for this call, as :func:`run_ray` does)."""
    started = connect(address)
    try:
        yield from ray_map(fn, shared, items, describe)
    finally:
        if started:
            ray.shutdown()


def run_ray(
    job: ShardJob,
    tasks: list[ShardTask],
    *,
    address: str | None = None,
    on_images: Callable[[int], None],
    on_done: Callable[[ShardResult], None],
    **_: Any,
) -> None:
    """Run every shard task on Ray; ``on_done`` gets each result in the driver as it arrives."""
    started = connect(address)
    try:
        log.info("ray: %d shard tasks on %s CPUs", len(tasks), ray.cluster_resources().get("CPU"))
        for task, result in ray_map(run_task, job, tasks, lambda t: f"shard {t.index} ({t.span})"):
            on_images(len(task.items))
            on_done(result)
    except ShardTaskError as e:
        raise ShardTaskError(f"{e}; the shards written so far are kept: run again with --resume to finish") from e
    finally:
        if started:
            ray.shutdown()
