"""The shared runner's bookkeeping, on a local folder: receipts of this plan are finished items, receipts
of another plan are refused, and results that recorded an infrastructure failure are run again."""

from __future__ import annotations

import json
import os

import pytest

from taskray.core.runner import finished_items, mark_complete, plan_pools, receipt_name, share_actors
from taskray.core.storage import Store
from taskray.errors import BadInput


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
