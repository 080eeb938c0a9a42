"""The one way a job runs its items on Ray: each exactly once, resumable, refusing to mix two runs.

A job hands over a dict of items (each named by a unique key) and a worker class. The worker is built
once per Ray actor (imports, Docker pools and caches stay warm) and turns one item into a small
JSON-able result, writing the item's own output atomically on the way (a catalog piece, a mix shard).
The runner:

- reads the receipts already in DEST (`_progress/<key>.json`, the item's result plus the run's
  `plan_id`) and skips those items; a receipt of another plan means DEST holds a different run, which
  is refused (`BadInput`), never mixed in;
- runs the rest on a pool of Ray actors: one per free CPU to start, growing up to one per item as the
  cluster has room (an autoscaling cluster is asked for it); two items queued per actor, so no actor
  waits for the driver. An item whose actor or node died runs again on another actor, so
  infrastructure failures never become results;
- while a local Ray is still starting in the background (raycluster.init_ray), and until its first actor
  has an item, runs items with a worker of its own, in this process or a child process, for workers
  that ask for it (`while_ray_starts`, core/early.py): a local start takes seconds;
- writes each receipt on the driver as its result arrives (after the item's output: a receipt means
  the output is whole) and yields it, so the job can show progress. Receipts are written by a few
  threads at once: one PUT at a time would cap a cluster at one item per store round trip.

The job writes its completion marker (summary.json, manifest.json, ...) with `mark_complete` once every
item is done: the marker is written last, so a reader that waits for it never sees half a run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from taskray.core.early import EarlyWorker, Lost, early_worker
from taskray.core.storage import Store
from taskray.errors import BadInput, JobFailed, TaskrayError

RECEIPTS = "_progress"
RECEIPT_WRITERS = 16  # receipts in flight at once
MAX_ATTEMPTS = 4  # an item whose actor died this often fails the run: it is likely what kills them
LOOK_FOR_ROOM = 1.0  # seconds between looks for free CPUs that a growing pool could start actors on
ACTOR_EXIT_WAIT = 60.0  # seconds the end of a run waits for its actors' clean-up
EARLY_POLL = 0.05  # seconds between looks at an item running in the early worker's child process


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


class ItemActor:
    """The Ray actor: builds the job's worker once, then turns items into JSON-able results.

    A worker that cannot be built (no Docker on that node, a bad argument) is not an actor death: the
    error is kept and raised by every call, so it reaches the driver as the worker's own exception. A
    worker with a `close()` method has it called when the actor has no more items (containers, say)."""

    def __init__(self, worker: Callable[..., Callable[[dict], dict]], worker_args: dict):
        try:
            self.worker, self.broken = worker(**worker_args), None
        except Exception as err:
            self.worker, self.broken = None, err

    def run(self, item: dict) -> dict:
        if self.broken is not None:
            raise self.broken
        return self.worker(item)

    def close(self) -> None:
        if hasattr(self.worker, "close"):
            self.worker.close()


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
    if not items:
        return
    from taskray.core.raycluster import wait_for_ray

    finished = 0
    writers = ThreadPoolExecutor(RECEIPT_WRITERS, thread_name_prefix="receipts")
    writing: set[Future] = set()
    here = early_worker(worker, worker_args or {})
    attempts: Counter = Counter()  # an item's runs that ended with its process's death
    on_ray: list[_Actors] = []

    def results() -> Iterator[tuple[str, dict]]:
        left = dict(items)

        def collect(timeout: float) -> Iterator[tuple[str, dict]]:
            try:
                done = here.collect(timeout)
            except Lost as lost:
                attempts[lost.key] += 1
                left[lost.key] = items[lost.key]
            else:
                yield from [done] if done else []

        while here.running() and (left or here.busy()):  # Ray is starting: items run meanwhile
            if left and not here.busy():
                key = next(iter(left))
                here.take(key, left.pop(key))
            yield from collect(EARLY_POLL)
        if not left and not here.busy():
            return  # every item ran before Ray was up
        wait_for_ray()
        while here.busy() and not left:  # the last item is in hand
            yield from collect(EARLY_POLL)
        if left:
            plan = plan_pools(list(left), placement or {}, actors)
            on_ray.append(
                _Actors(left, plan, worker, worker_args or {}, cpus_per_actor, concurrent_calls, attempts)
            )
            yield from on_ray[0].results(here)

    whole = False
    try:
        for key, result in results():
            receipt = json.dumps({"plan_id": plan_id, "key": key, "result": result}).encode()
            writing.add(writers.submit(store.write_bytes, receipt_name(key), receipt))
            for written in [w for w in writing if w.done()]:
                writing.discard(written)
                written.result()  # a receipt that could not be written fails the run now, not later
            finished += 1
            yield key, result
        for written in writing:
            written.result()  # every receipt is down before the job may write its completion marker
        whole = True
    except Exception as err:  # an item failed (or kept killing its actors), or storage did
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
        if on_ray:
            on_ray[0].close(graceful=whole)
        here.close(wait=True)
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


class _Pool:
    """Actors (started on one node, or anywhere) for some of the items, and the items they have left."""

    def __init__(self, keys: list[str], actor_class: Any, target: int, grows: bool):
        self.todo = deque(keys)
        self.actor_class, self.target, self.grows = actor_class, target, grows
        self.load: dict[Any, int] = {}  # a started actor: its calls in flight
        self.starting = 0


class _Actors:
    """Runs items on pools of ItemActors, each item to exactly one result.

    Plain Ray actors rather than a Ray Data pipeline: items are few and coarse (a file's piece, a batch of
    samples), and a Ray Data pool starts its actors in new worker processes beside its own helper
    actors, which costs seconds at the start of every job; plain actors take the workers Ray prestarts.
    Each actor keeps `2 * concurrent_calls` items in hand, so it never waits for the driver. An item whose
    actor or node died goes back to its pool's queue, to run alone on an actor next time (the actor may
    have died of another item in hand), and a new actor takes the dead one's place; an item that a worker
    failed on, or whose actors died MAX_ATTEMPTS times, fails the run.
    """

    def __init__(
        self,
        items: dict[str, dict],
        plan: list,
        worker: Callable,
        worker_args: dict,
        cpus_per_actor: float,
        concurrent_calls: int,
        attempts: Counter,
    ):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.items, self.args, self.cpus = items, (worker, worker_args), cpus_per_actor
        self.concurrent, self.per_actor = concurrent_calls, 2 * concurrent_calls
        self.calls: dict[Any, tuple[_Pool, Any, str]] = {}  # an item's call: its pool, actor and key
        self.starting: dict[Any, tuple[_Pool, Any]] = {}  # an actor's readiness: its pool and actor
        self.ending: list = []  # retired actors' clean-ups
        self.retired: list = []  # and the actors
        self.attempts = attempts  # an item's calls that ended with its actor's (or early worker's) death
        self.alone: set = set()  # actors running an item whose actor died before, and nothing else
        self.failed_starts = 0
        self.asked_autoscaler = False
        alive = ray.nodes() if any(node for node, _, _ in plan) else []
        node_cpus = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in alive if n["Alive"]}
        actor_class = ray.remote(ItemActor)
        self.pools = []
        for node, keys, size in plan:
            options: dict = {"num_cpus": cpus_per_actor, "max_concurrency": concurrent_calls}
            if node:  # no more than the node can run at once: the others would wait for it forever
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
                target = min(size or len(keys), self._fitting(node_cpus.get(node, 1)))
            else:
                target = size or min(len(keys), self._fitting(ray.available_resources().get("CPU", 1)))
            self.pools.append(
                _Pool(keys, actor_class.options(**options), target, grows=not node and not size)
            )

    def _fitting(self, cpus: float) -> int:
        return max(1, int(cpus // max(self.cpus, 1e-9)))

    def results(self, here: EarlyWorker) -> Iterator[tuple[str, dict]]:
        """(key, result) of every item, as each finishes. Until an actor has an item, `here` (the worker
        that ran items while Ray started, if any) goes on taking them: the actors take a moment to
        start."""
        import ray

        for pool in self.pools:
            self._balance(pool)
        self._ask_autoscaler()
        looked = time.monotonic()
        while self.calls or here.busy() or any(pool.todo for pool in self.pools):
            wait = LOOK_FOR_ROOM
            if here.wanted and not self.calls:
                pool = next((pool for pool in self.pools if pool.todo), None)
                if pool and not here.busy():
                    key = pool.todo.popleft()
                    here.take(key, self.items[key])
            elif here.wanted:
                here.stop()
            waiting = [*self.calls, *self.starting]
            if here.busy():
                try:
                    done = here.collect(0 if waiting else EARLY_POLL)
                except Lost as lost:
                    self._lost(lost.key)
                else:
                    yield from [done] if done else []
                wait = EARLY_POLL if here.busy() else 0
            ready, _ = ray.wait(waiting, num_returns=1, timeout=wait) if waiting else ([], [])
            for ref in ready:
                if ref in self.starting:
                    self._started(ref)
                else:
                    yield from self._finished(ref)
            if time.monotonic() - looked >= LOOK_FOR_ROOM:
                self._grow()
                looked = time.monotonic()

    def _lost(self, key: str) -> None:
        """The early worker's child died with `key` in hand: it runs on an actor, as if one had died."""
        self.attempts[key] += 1
        if self.attempts[key] >= MAX_ATTEMPTS:
            raise JobFailed(f"item {key}: its worker died {self.attempts[key]} times")
        pool = self.pools[-1]  # the unplaced items' pool, if there is one
        pool.todo.appendleft(key)
        self._balance(pool)

    def _start(self, pool: _Pool) -> None:
        actor = pool.actor_class.remote(*self.args)
        self.starting[actor.__ray_ready__.remote()] = (pool, actor)
        pool.starting += 1

    def _started(self, ref: Any) -> None:
        import ray

        pool, actor = self.starting.pop(ref)
        pool.starting -= 1
        try:
            ray.get(ref)
        except ray.exceptions.RayError as err:  # its node or process died before it was up
            self.failed_starts += 1
            if self.failed_starts >= MAX_ATTEMPTS * max(1, len(self.pools)):
                raise JobFailed(f"worker actors keep dying as they start: {_first_line(err)}") from err
        else:
            self.failed_starts = 0
            pool.load[actor] = 0
        self._balance(pool)

    def _finished(self, ref: Any) -> Iterator[tuple[str, dict]]:
        import ray

        rx = ray.exceptions
        infra = (
            rx.RayActorError,
            rx.WorkerCrashedError,
            rx.NodeDiedError,
            rx.ObjectLostError,
            rx.LocalRayletDiedError,
            rx.OutOfMemoryError,
        )
        pool, actor, key = self.calls.pop(ref)
        try:
            result = ray.get(ref)
        except infra as err:  # not the item's fault: it runs again on another actor
            self.attempts[key] += 1
            if self.attempts[key] >= MAX_ATTEMPTS:
                raise JobFailed(
                    f"item {key}: its worker died {self.attempts[key]} times ({_first_line(err)})"
                ) from err
            pool.todo.appendleft(key)
            if actor in pool.load:
                del pool.load[actor]
                self.alone.discard(actor)
                ray.kill(actor, no_restart=True)  # its other calls fail too and come back here
            self._balance(pool)
            return
        if actor in pool.load:  # else a late answer of an actor given up on: the result stands all the same
            pool.load[actor] -= 1
            self.alone.discard(actor)
        self._balance(pool)  # the actor's next item is on its way before the driver records this one
        yield key, result

    def _balance(self, pool: _Pool) -> None:
        """Hand queued items to the pool's actors with room, start actors for what is left (up to the
        pool's target), and let actors with nothing left to do go (their CPUs may serve another pool)."""
        while pool.todo:  # one item at a time to the least loaded actor: items spread over the actors
            room = [a for a, load in pool.load.items() if load < self.per_actor and a not in self.alone]
            if not room:
                break
            actor = min(room, key=pool.load.get)
            if self.attempts[pool.todo[0]]:  # its actor died: it runs alone, so a death is its own
                if pool.load[actor]:
                    break
                self.alone.add(actor)
            key = pool.todo.popleft()
            self.calls[actor.run.remote(self.items[key])] = (pool, actor, key)
            pool.load[actor] += 1
        # an actor for every item that would not start running at once, up to the pool's target
        actors = len(pool.load) + pool.starting
        while len(pool.todo) > pool.starting * self.concurrent and actors < pool.target:
            self._start(pool)
            actors += 1
        if not pool.todo:
            for actor in [a for a, load in pool.load.items() if load == 0]:
                self._retire(pool, actor)

    def _retire(self, pool: _Pool, actor: Any) -> None:
        del pool.load[actor]
        self.ending.append(actor.close.remote())
        self.retired.append(actor)
        actor.__ray_terminate__.remote()

    def _grow(self) -> None:
        """Start more actors of a pool that may grow, if the cluster has CPUs free for them now (an
        autoscaling cluster adds nodes when asked, see _ask_autoscaler)."""
        import ray

        if self.starting:
            return  # the free CPUs the cluster reports may be theirs
        free = ray.available_resources().get("CPU", 0)
        for pool in self.pools:
            while pool.grows and free >= self.cpus and len(pool.todo) > pool.starting * self.concurrent:
                pool.target += 1
                self._start(pool)
                free -= self.cpus

    def _ask_autoscaler(self) -> None:
        """Ask an autoscaling cluster for CPUs for the items a pool may grow onto (a no-op elsewhere)."""
        from ray.autoscaler.sdk import request_resources

        wanted = sum(len(pool.todo) for pool in self.pools if pool.grows and len(pool.todo) > pool.target)
        if wanted:
            try:
                request_resources(bundles=[{"CPU": self.cpus}] * wanted)
                self.asked_autoscaler = True
            except Exception as err:  # a hint, not a need: the run goes on with the CPUs there are
                logging.getLogger(__name__).warning("could not ask the autoscaler for CPUs: %s", err)

    def close(self, graceful: bool = True) -> None:
        """End every actor: after a whole run, waiting (a while) for its worker's clean-up; after a
        failure, at once (queued items would hold a graceful close back; a worker's containers are
        reaped by the next pool). Withdraw the request for CPUs."""
        import ray

        for pool in self.pools:
            for actor in list(pool.load):
                self._retire(pool, actor)
        for _, actor in self.starting.values():
            ray.kill(actor, no_restart=True)  # never up, or not yet: it holds no items
        self.starting.clear()
        if self.ending and graceful:
            ray.wait(self.ending, num_returns=len(self.ending), timeout=ACTOR_EXIT_WAIT)
        for actor in self.retired:  # whatever has not ended by now is not waited for
            ray.kill(actor, no_restart=True)
        if self.asked_autoscaler:
            from ray.autoscaler.sdk import request_resources

            with contextlib.suppress(Exception):  # the cluster may be gone; nothing is left to ask for
                request_resources(bundles=[])


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


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
