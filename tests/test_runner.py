"""The shared runner: its bookkeeping on a local folder (receipts of this plan are finished items,
receipts of another plan are refused, results that recorded an infrastructure failure are run again), and
its actors on a real local Ray (an item whose worker process dies runs again; one that keeps killing its
workers fails the run; a worker that cannot be built fails it with its own error; actors end gracefully),
and, while a local Ray starts in the background, in the driver itself or a child process of it for workers
that ask for it (then on the actors; an item that fails there fails the run as on an actor, one whose child
crashed runs again on an actor)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskray.core.early import InChild, Lost
from taskray.core.runner import (
    MAX_ATTEMPTS,
    finished_items,
    mark_complete,
    plan_pools,
    receipt_name,
    run_items,
    share_actors,
)
from taskray.core.storage import Store
from taskray.errors import BadInput, JobFailed, StorageError


def write_receipt(store: Store, plan_id: str, key: str, result: dict) -> None:
    store.write_bytes(
        receipt_name(key), json.dumps({"plan_id": plan_id, "key": key, "result": result}).encode()
    )


def test_receipts_decide_what_is_finished(tmp_path):
    store = Store(str(tmp_path))
    assert finished_items(store, "p1") == {}
    write_receipt(store, "p1", "data/a.parquet", {"rows": 3})
    write_receipt(store, "p1", "batch-1", {"rows": [{"status": "infra_error"}]})
    assert set(finished_items(store, "p1")) == {"data/a.parquet", "batch-1"}
    again = finished_items(store, "p1", redo=lambda r: "infra_error" in json.dumps(r))
    assert again == {"data/a.parquet": {"rows": 3}}
    write_receipt(store, "p2", "data/b.parquet", {"rows": 1})
    with pytest.raises(BadInput, match="different run"):
        finished_items(store, "p1")


def test_the_completion_marker_is_plain_sorted_json(tmp_path):
    store = Store(str(tmp_path))
    old = os.umask(0o022)
    try:
        mark_complete(store, "summary.json", {"b": 1, "a": [1, 2]})
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644


def test_a_fixed_number_of_actors_is_shared_among_the_pools():
    assert share_actors([10, 10], 4) == [2, 2]
    assert share_actors([30, 10], 4) == [3, 1]
    assert share_actors([1, 50, 3], 6) == [1, 4, 1]  # none gets more actors than items
    assert share_actors([2, 2], 10) == [2, 2]
    assert sum(share_actors([7, 5, 9, 1], 8)) == 8


def test_placed_items_run_in_a_pool_per_node_within_a_fixed_number_of_actors():
    keys = [f"k{i}" for i in range(10)]
    placement = {"k0": "a", "k1": "a", "k2": "a", "k3": "b", "gone": "a"}
    # unbounded: a pool per node, sized later by its CPUs; the unplaced rest in the usual pool
    assert plan_pools(keys, placement, None) == [
        ("a", ["k0", "k1", "k2"], None),
        ("b", ["k3"], None),
        (None, keys[4:], None),
    ]
    assert plan_pools(keys, placement, 5) == [
        ("a", ["k0", "k1", "k2"], 2),
        ("b", ["k3"], 1),
        (None, keys[4:], 2),
    ]
    # two actors for three pools: the smallest node's items join the rest
    assert plan_pools(keys, placement, 2) == [("a", ["k0", "k1", "k2"], 1), (None, keys[3:], 1)]
    assert plan_pools(keys, placement, 1) == [(None, keys, 1)]
    assert plan_pools(keys[:4], placement, 8) == [("a", ["k0", "k1", "k2"], 3), ("b", ["k3"], 1)]


class DiesOnSomeItems:
    """A worker whose process dies (os._exit, as a segfault or a lost node would end it) on items marked
    `die`, the first `deaths` times each; it leaves a file behind when closed."""

    def __init__(self, marks: str, deaths: int):
        self.marks, self.deaths = Path(marks), deaths

    def close(self) -> None:
        (self.marks / f"closed-{os.getpid()}").touch()

    def __call__(self, item: dict) -> dict:
        if item.get("die"):
            tries = self.marks / f"tries-{item['n']}"
            count = int(tries.read_text()) if tries.exists() else 0
            tries.write_text(str(count + 1))
            if count < self.deaths:
                (self.marks / f"died-{os.getpid()}").touch()
                os._exit(1)
        return {"n": item["n"], "pid": os.getpid()}


class CannotBeBuilt:
    def __init__(self):
        raise StorageError("s3://nowhere: the bucket does not exist")


@pytest.fixture
def ray_here(ray_local):
    """Ray workers cannot import this test module by name: its classes travel by value."""
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_local


def some_items(dying: int) -> dict[str, dict]:
    return {f"i{n}": {"n": n, "die": n == dying} for n in range(8)}


def test_an_item_whose_worker_died_runs_again_and_every_actor_ends_gracefully(ray_here, tmp_path):
    marks, store = tmp_path / "marks", Store(str(tmp_path / "out"))
    marks.mkdir()
    worker_args = {"marks": str(marks), "deaths": 1}
    got = dict(run_items(some_items(3), DiesOnSomeItems, store, "plan", worker_args))
    assert {key: r["n"] for key, r in got.items()} == {f"i{n}": n for n in range(8)}
    assert (marks / "tries-3").read_text() == "2"  # died once, then ran on another actor
    assert set(finished_items(store, "plan")) == set(got)
    # every actor that ran items had its worker closed (containers removed, say) before run_items returned
    died = {int(f.name[5:]) for f in marks.glob("died-*")}
    assert len(died) == 1
    assert {r["pid"] for r in got.values()} - died <= {int(f.name[7:]) for f in marks.glob("closed-*")}


def test_an_item_that_keeps_killing_its_workers_fails_the_run_by_name(ray_here, tmp_path):
    marks, store = tmp_path / "marks", Store(str(tmp_path / "out"))
    marks.mkdir()
    worker_args = {"marks": str(marks), "deaths": 99}
    done = []
    with pytest.raises(JobFailed, match=f"item i5: its worker died {MAX_ATTEMPTS} times") as err:
        for key, _ in run_items(some_items(5), DiesOnSomeItems, store, "plan", worker_args):
            done.append(key)
    assert "rerun the same command to resume" in str(err.value)
    assert (marks / "tries-5").read_text() == str(MAX_ATTEMPTS)
    assert set(finished_items(store, "plan")) == set(done)  # what finished is kept


def test_a_worker_that_cannot_be_built_fails_the_run_with_its_own_error(ray_here, tmp_path):
    with pytest.raises(StorageError, match="s3://nowhere: the bucket does not exist; the run failed, 0 of 8"):
        list(run_items(some_items(-1), CannotBeBuilt, Store(str(tmp_path)), "plan"))


EARLY_WORKERS = '''
import ctypes
import os
import time
from pathlib import Path


class OddError(Exception):
    def __init__(self, what: str, why: str):  # its pickle cannot be rebuilt: Exception pickles args
        super().__init__(f"{what}: {why}")


class SlowHere:
    """Slow outside the actors (so Ray comes up while items are left), quick on them."""

    while_ray_starts = "driver"

    def __init__(self, marks: str, driver: int, fail: int = -1, die: int = -1, odd: int = -1):
        self.marks, self.driver, self.fail, self.die, self.odd = Path(marks), driver, fail, die, odd

    def close(self) -> None:
        (self.marks / f"closed-{os.getpid()}").touch()

    def __call__(self, item: dict) -> dict:
        early = os.getpid() == self.driver or os.getppid() == self.driver  # the driver or its child
        if early:
            if item["n"] == self.fail:
                raise ValueError(f"item {self.fail} is bad")
            if item["n"] == self.odd:
                raise OddError(f"item {self.odd}", "odd")
            if item["n"] == self.die:
                ctypes.string_at(0)  # a segfault, as a parser's bug would end the process
            time.sleep(0.6)  # 100 of them outlast even a slow machine's Ray start, twice over
        return {"n": item["n"], "pid": os.getpid(), "parent": os.getppid()}


class SlowInChild(SlowHere):
    while_ray_starts = "child"


class NotHere(SlowHere):
    while_ray_starts = None
'''

WHILE_RAY_STARTS = """
import json, os, sys

import early_workers
from taskray.core.console import say
from taskray.core.raycluster import init_ray, ray_starting
from taskray.core.runner import run_items
from taskray.core.storage import Store

marks, out, worker, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
init_ray(num_cpus=2, background=True)
say("test", f"ray starting: {ray_starting()}")  # reaches stderr while Ray's start discards descriptor 2
items = {f"i{n:03d}": {"n": n} for n in range(100)}
args = {"marks": marks, "driver": os.getpid(), **args}
got = dict(run_items(items, getattr(early_workers, worker), Store(out), "plan", args))
print(json.dumps({"driver": os.getpid(), "got": got}))
"""


def run_while_ray_starts(tmp_path: Path, worker: str, **args) -> subprocess.CompletedProcess:
    (tmp_path / "marks").mkdir()
    (tmp_path / "early_workers.py").write_text(EARLY_WORKERS)
    script = tmp_path / "while_ray_starts.py"
    script.write_text(WHILE_RAY_STARTS)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}  # the actors and the child import early_workers
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        str(script),
        str(tmp_path / "marks"),
        str(tmp_path / "out"),
        worker,
        json.dumps(args),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def every_item_done(proc: subprocess.CompletedProcess) -> tuple[dict, int]:
    """The results of a whole run of WHILE_RAY_STARTS, and its driver's pid."""
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {key: r["n"] for key, r in run["got"].items()} == {f"i{n:03d}": n for n in range(100)}
    return run["got"], run["driver"]


def test_items_run_in_the_driver_while_a_background_ray_starts_then_on_actors(tmp_path):
    proc = run_while_ray_starts(tmp_path, "SlowHere")
    got, driver = every_item_done(proc)
    here = [key for key, r in got.items() if r["pid"] == driver]
    assert here and len(here) < 100  # some ran while Ray started, the rest on its actors
    assert "i000" in here  # the first item did not wait for Ray
    assert set(finished_items(Store(str(tmp_path / "out")), "plan")) == set(got)
    assert (tmp_path / "marks" / f"closed-{driver}").exists()  # the driver's worker was closed
    # our line got through while Ray started; Ray's own start-up lines did not
    assert proc.stderr.splitlines() == ["[test] ray starting: True"], proc.stderr


@pytest.mark.parametrize("worker", ["SlowHere", "SlowInChild"])  # in the driver, in its child process
def test_an_item_that_fails_while_ray_starts_fails_the_run_like_on_an_actor(tmp_path, worker):
    proc = run_while_ray_starts(tmp_path, worker, fail=1)
    assert proc.returncode == 1
    assert (
        "JobFailed: an item failed: ValueError: item 1 is bad; the run failed, 1 of 100 items done"
        in proc.stderr
    )
    assert set(finished_items(Store(str(tmp_path / "out")), "plan")) == {"i000"}  # kept


def test_a_worker_that_does_not_allow_it_never_runs_in_the_driver(tmp_path):
    got, driver = every_item_done(run_while_ray_starts(tmp_path, "NotHere"))
    assert all(driver not in (r["pid"], r["parent"]) for r in got.values())


def test_items_run_in_a_child_process_while_ray_starts_then_on_actors(tmp_path):
    proc = run_while_ray_starts(tmp_path, "SlowInChild")
    got, driver = every_item_done(proc)
    assert not [key for key, r in got.items() if r["pid"] == driver]  # never in the driver itself
    child = {r["pid"] for r in got.values() if r["parent"] == driver}
    assert len(child) == 1  # one child process ran the early items
    early = [key for key, r in got.items() if r["pid"] in child]
    assert "i000" in early and len(early) < 100  # the first item did not wait for Ray; actors ran the rest
    assert set(finished_items(Store(str(tmp_path / "out")), "plan")) == set(got)
    assert (tmp_path / "marks" / f"closed-{child.pop()}").exists()  # the child's worker was closed
    assert proc.stderr.splitlines() == ["[test] ray starting: True"], proc.stderr


def test_the_early_child_process_returns_results_raises_errors_and_reports_its_death(tmp_path, monkeypatch):
    (tmp_path / "marks").mkdir()
    (tmp_path / "early_workers.py").write_text(EARLY_WORKERS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the child imports early_workers, as we do
    monkeypatch.syspath_prepend(str(tmp_path))
    import early_workers

    marks = tmp_path / "marks"
    args = {"marks": str(marks), "driver": os.getpid(), "fail": 1, "die": 2, "odd": 3}

    def outcome(child: InChild, key: str, n: int):
        child.take(key, {"n": n})
        assert child.busy()
        while (done := child.collect(0.5)) is None:
            pass
        return done

    child = InChild(early_workers.SlowInChild, args)
    key, result = outcome(child, "a", 0)
    assert key == "a" and result["n"] == 0 and result["parent"] == os.getpid() != result["pid"]
    with pytest.raises(ValueError, match="item 1 is bad"):  # the item's own error, its type kept
        outcome(child, "b", 1)
    with pytest.raises(RuntimeError, match="OddError: item 3: odd"):  # one that does not unpickle: said
        outcome(child, "d", 3)
    child.close(wait=True)
    assert (marks / f"closed-{result['pid']}").exists()  # closing the child closes its worker

    child = InChild(early_workers.SlowInChild, args)
    with pytest.raises(Lost) as lost:  # the child crashed: not the item's error
        outcome(child, "c", 2)
    assert lost.value.key == "c" and not child.busy()
    child.close(wait=True)


def test_an_item_whose_child_process_crashed_runs_again_on_an_actor(tmp_path):
    proc = run_while_ray_starts(tmp_path, "SlowInChild", die=1)
    got, driver = every_item_done(proc)
    assert got["i000"]["parent"] == driver  # the child ran the first item, then died on the second
    assert got["i001"]["parent"] != driver  # which an actor ran: a crash is not the item's failure
    assert sum(r["parent"] == driver for r in got.values()) == 1  # a child that died is not replaced
