"""The one way a job runs its items on Ray: each exactly once, resumable, refusing to mix two runs.

A job hands over a dict of items (each named by a unique key) and a worker class. The worker is built
once per Ray Data actor (imports, Docker pools and caches stay warm) and turns one item into a small
JSON-able result, writing the item's own output atomically on the way (a catalog piece, a mix shard).
The runner:

- reads the receipts already in DEST (`_progress/<key>.json`, the item's result plus the run's
  `plan_id`) and skips those items; a receipt of another plan means DEST holds a different run, which
  is refused (`BadInput`), never mixed in;
- runs the rest on a pool of Ray Data actors: one per free CPU to start, growing up to one per item when
  an autoscaling cluster adds nodes; two items queued per actor, so no actor waits for the driver. Ray
  Data retries an item whose actor or node died, so infrastructure failures never become results;
- writes each receipt on the driver as its result arrives (after the item's output: a receipt means
  the output is whole) and yields it, so the job can show progress. Receipts are written by a few
  threads at once: one PUT at a time would cap a cluster at one item per store round trip.

The job writes its completion marker (summary.json, manifest.json, ...) with `mark_complete` once every
item is done: the marker is written last, so a reader that waits for it never sees half a run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from taskray.core.storage import Store
from taskray.errors import BadInput, JobFailed, TaskrayError

RECEIPTS = "_progress"
RECEIPT_WRITERS = 16  # receipts in flight at once


def receipt_name(key: str) -> str:
    return f"{RECEIPTS}/{key.replace('/', '__')}.json"


def finished_items(store: Store, plan_id: str, redo: Callable[[dict], bool] | None = None) -> dict[str, dict]:
    """Results of the items an earlier run of the same plan finished, by key; those for which `redo`
    says so (an infrastructure failure recorded as a result) are left out, to be run again."""
    done = {}
    for rel in store.list(RECEIPTS):
        receipt = json.loads(store.read_bytes(rel))
        if receipt.get("plan_id") != plan_id:
            raise BadInput(
                f"{store.url} holds part of a different run ({rel}); use another destination, "
                "or delete it to start over"
            )
        if redo is None or not redo(receipt["result"]):
            done[receipt["key"]] = receipt["result"]
    return done


class _ItemActor:
    """The Ray Data actor: builds the job's worker once, then maps items to JSON results."""

    def __init__(self, worker: Callable[..., Callable[[dict], dict]], worker_args: dict):
        self.worker = worker(**worker_args)

    def __call__(self, row: dict) -> dict:
        result = self.worker(json.loads(row["item"]))
        return {"key": row["key"], "result": json.dumps(result)}


def run_items(
    items: dict[str, dict],
    worker: Callable[..., Callable[[dict], dict]],
    store: Store,
    plan_id: str,
    worker_args: dict | None = None,
    cpus_per_actor: float = 1,
    actors: int | None = None,
    concurrent_calls: int = 1,
    placement: dict[str, str] | None = None,
) -> Iterator[tuple[str, dict]]:
    """Run every item not finished yet; yield (key, result) as each finishes. Ray must be initialised.

    `actors` fixes how many actors run, all pools together (default: one per free CPU, growing with the
    cluster).
    `concurrent_calls` > 1 runs that many queued items at once in each actor (threads): for workers
    that wait on something else, like containers, rather than compute.
    `placement` maps keys to the Ray node that should run them (where their inputs already are): those
    items go to a pool of actors on that node (soft: if the node is gone, anywhere), the rest as usual;
    with `actors` fewer than the pools, the smallest nodes' items are not placed.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not items:
        return
    pools = plan_pools(list(items), placement or {}, actors)
    alive = ray.nodes() if any(node for node, _, _ in pools) else []
    node_cpus = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in alive if n["Alive"]}
    common = {"worker": worker, "worker_args": worker_args or {}, "cpus_per_actor": cpus_per_actor}
    common["concurrent_calls"] = concurrent_calls

    def actors_fitting(cpus: float) -> int:
        return max(1, int(cpus // max(cpus_per_actor, 1e-9)))

    parts = []
    for node, keys, size in pools:
        if node:  # no more than the node can run at once: the others would wait for it forever
            room = actors_fitting(node_cpus.get(node, 1))
            sizes = {"size": min(size, room)} if size else {"min_size": 1, "max_size": min(len(keys), room)}
        elif size:
            sizes = {"size": size}
        else:
            cpus = actors_fitting(ray.available_resources().get("CPU", 1))
            # above the CPUs there are now, Ray Data grows the pool only when an autoscaling cluster adds
            # nodes
            sizes = {"min_size": 1, "initial_size": min(cpus, len(keys)), "max_size": len(keys)}
        pinned = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)} if node else {}
        parts.append(_mapped(items, keys, sizes, pinned, **common))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    finished = 0
    writers = ThreadPoolExecutor(RECEIPT_WRITERS, thread_name_prefix="receipts")
    writing: set[Future] = set()
    try:
        for row in ds.iter_rows():
            result = json.loads(row["result"])
            receipt = json.dumps({"plan_id": plan_id, "key": row["key"], "result": result}).encode()
            writing.add(writers.submit(store.write_bytes, receipt_name(row["key"]), receipt))
            for written in [w for w in writing if w.done()]:
                writing.discard(written)
                written.result()  # a receipt that could not be written fails the run now, not later
            finished += 1
            yield row["key"], result
        for written in writing:
            written.result()  # every receipt is down before the job may write its completion marker
    except Exception as err:  # an item kept failing after Ray Data's retries, or storage did
        cause = _root_cause(err)
        if isinstance(cause, BadInput):
            raise cause from err
        resume = (
            f"the run failed, {finished} of {len(items)} items done (kept); rerun the same command to resume"
        )
        if isinstance(cause, TaskrayError):  # e.g. a StorageError raised in a worker: say it as it is
            raise type(cause)(f"{cause}; {resume}") from err
        raise JobFailed(f"an item failed: {type(cause).__name__}: {cause}; {resume}") from err
    finally:
        writers.shutdown(wait=True)  # receipts of results already received are kept, even on failure


def plan_pools(
    keys: list[str], placement: dict[str, str], actors: int | None
) -> list[tuple[str | None, list[str], int | None]]:
    """The actor pools to run `keys` on: (node, its keys, fixed size or None) per node that `placement`
    sends items to, then (None, the rest, ...). A fixed number of `actors` is shared among the pools, one
    actor at least each, so the smallest nodes' items are not placed when there are more pools than
    actors. Pure."""
    wanted = set(keys)
    placement = {key: node for key, node in placement.items() if key in wanted}
    by_node: dict[str, list[str]] = {}
    for key in keys:
        if key in placement:
            by_node.setdefault(placement[key], []).append(key)
    unplaced = len(placement) < len(keys)
    while actors and by_node and len(by_node) + unplaced > actors:
        smallest = min(by_node, key=lambda node: (len(by_node[node]), node))
        del by_node[smallest]  # its items run anywhere rather than overrun the bound
        unplaced = True
    placed = {key for group in by_node.values() for key in group}
    rest = [key for key in keys if key not in placed]
    pools: list[tuple[str | None, list[str]]] = sorted(by_node.items()) + ([(None, rest)] if rest else [])
    sizes = share_actors([len(group) for _, group in pools], actors) if actors else [None] * len(pools)
    return [(node, group, size) for (node, group), size in zip(pools, sizes)]


def share_actors(counts: list[int], actors: int) -> list[int]:
    """Split `actors` among pools of `counts` items: one each at least, none more than its items, the
    rest one at a time to the pool with the most items per actor. Pure."""
    sizes = [1] * len(counts)
    for _ in range(actors - len(counts)):
        growable = [i for i, count in enumerate(counts) if sizes[i] < count]
        if not growable:
            break
        grow = max(growable, key=lambda i: counts[i] / sizes[i])
        sizes[grow] += 1
    return sizes


def _mapped(
    items: dict[str, dict],
    keys: list[str],
    sizes: dict,
    remote_args: dict,
    worker: Callable,
    worker_args: dict,
    cpus_per_actor: float,
    concurrent_calls: int,
):
    """The dataset of the items `keys`, mapped by a pool of `sizes` actors."""
    import ray

    threads = {"max_concurrent_calls_per_actor": concurrent_calls, "enable_true_multi_threading": True}
    pool = ray.data.ActorPoolStrategy(
        **sizes,
        max_tasks_in_flight_per_actor=2 * concurrent_calls,  # the next item is always waiting
        **(threads if concurrent_calls > 1 else {}),
    )
    rows = [{"key": key, "item": json.dumps(items[key])} for key in keys]
    return ray.data.from_items(rows, override_num_blocks=len(rows)).map(
        _ItemActor,
        fn_constructor_kwargs={"worker": worker, "worker_args": worker_args},
        num_cpus=cpus_per_actor,
        compute=pool,
        **remote_args,
    )


def _root_cause(err: BaseException) -> BaseException:
    """The exception a worker raised, under the layers Ray and Ray Data wrap it in."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "cause", None)  # a RayTaskError: the worker's exception is its cause
        if isinstance(inner, BaseException):
            err = inner
        elif isinstance(err, TaskrayError) or err.__cause__ is None:
            return err
        else:
            err = err.__cause__
    return err


def mark_complete(store: Store, name: str, record: Any) -> None:
    """Write the run's completion marker, last: its presence means every output is whole."""
    store.write_bytes(name, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
