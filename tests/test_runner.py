"""The shared runner's bookkeeping, on a local folder: receipts of this plan are finished items, receipts
of another plan are refused, and results that recorded an infrastructure failure are run again."""

from __future__ import annotations

import json
import os

import pytest

from taskray.core.runner import finished_items, mark_complete, receipt_name
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
