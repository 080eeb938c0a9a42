"""Mixture index math, the spec, and row rendering: plain functions, no cluster."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np
import pytest

from taskray.mix.job import rows_per_shard
from taskray.mix.spec import Entry, SpecError, parse_spec
from taskray.mix.split import build_split, make_row, render_rows
from taskray.tasks.gsm8k import GSM8K
from taskray.tasks.mixture import Component, MixtureIndex, counts_for_proportions, counts_for_weights, permute
from taskray.tasks.spellingbee import SimpleSpelling, SpellingBee


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 16, 17, 100, 1000, 4097, 65_537])
def test_permute_is_a_bijection(n):
    for seed in (0, 1, 12345):
        out = permute(np.arange(n), n, seed)
        assert np.array_equal(np.sort(out), np.arange(n))


def test_seed_changes_the_order_and_nothing_else():
    n = 10_000
    a, b = permute(np.arange(n), n, 0), permute(np.arange(n), n, 1)
    assert not np.array_equal(a, b)
    assert (a == np.arange(n)).mean() < 0.01  # really shuffled
    idx = [MixtureIndex([Component(100, 250), Component(40, 40), Component(7, 3)], seed=s) for s in (0, 1)]
    rows = [sorted(zip(*(x.tolist() for x in i.lookup(np.arange(len(i)))))) for i in idx]
    assert rows[0] == rows[1]
    assert not np.array_equal(idx[0].lookup(np.arange(293))[0], idx[1].lookup(np.arange(293))[0])


def test_oversampling_takes_full_passes_then_an_even_subset():
    idx = MixtureIndex([Component(7, 17), Component(10, 4)], seed=3)
    comp, local, flat = idx.lookup(np.arange(len(idx)))
    assert len(idx) == 21 and np.array_equal(np.sort(flat), np.arange(21))
    first = np.bincount(local[comp == 0], minlength=7)
    assert sorted(first.tolist()) == [2, 2, 2, 2, 3, 3, 3]  # two passes, then 3 of the 7 rows
    second = np.sort(local[comp == 1])
    assert second.tolist() == [0, 2, 5, 7]  # 4 of 10 rows, spread out, not the first four


def test_counts_for_weights_and_proportions():
    assert counts_for_weights([10, 20], [2, 0.5]) == [20, 10]
    with pytest.raises(ValueError):
        counts_for_weights([10], [-1])
    # first_exhausted: stop when the first task runs out (task 0: 100 rows at 50%: 200 rows in all)
    assert counts_for_proportions([100, 1000], [0.5, 0.5], "first_exhausted") == [100, 100]
    assert counts_for_proportions([100, 1000], [1, 3], "first_exhausted") == [100, 300]
    # all_exhausted: go on until every task was seen whole (task 1 needs 2000 rows in all)
    assert counts_for_proportions([100, 1000], [0.5, 0.5], "all_exhausted") == [1000, 1000]
    lengths, props = [37, 501, 90], [0.2, 0.5, 0.3]
    for stopping in ("first_exhausted", "all_exhausted"):
        counts = counts_for_proportions(lengths, props, stopping)
        shares = np.array(counts) / sum(counts)
        assert np.allclose(shares, props, atol=0.02)
    assert all(c <= n for c, n in zip(counts_for_proportions(lengths, props), lengths))
    assert all(c >= n for c, n in zip(counts_for_proportions(lengths, props, "all_exhausted"), lengths))
    with pytest.raises(ValueError, match="stopping"):
        counts_for_proportions([1], [1], "never")


def test_index_over_ten_million_rows_is_fast_and_holds_no_per_row_objects():
    gc.collect()
    before = len(gc.get_objects())
    t0 = time.perf_counter()
    components = [Component(7_473, 3_000_000), Component(14_079, 5_000_000), Component(1_000, 2_000_000)]
    idx = MixtureIndex(components, seed=7)
    gc.collect()
    assert len(gc.get_objects()) - before < 100  # a few arrays, not 10^7 tuples
    per_comp = np.zeros(3, dtype=np.int64)
    for start in range(0, len(idx), 2_000_000):
        comp, local, _ = idx.lookup(np.arange(start, min(start + 2_000_000, len(idx))))
        per_comp += np.bincount(comp, minlength=3)
    elapsed = time.perf_counter() - t0
    assert len(idx) == 10_000_000 and per_comp.tolist() == [3_000_000, 5_000_000, 2_000_000]
    assert elapsed < 30, f"indexing 10^7 rows took {elapsed:.1f}s"


# -- the spec ------------------------------------------------------------------------------------------


def spec_dict(**over) -> dict:
    d = {
        "seed": 0,
        "splits": {
            "train": [
                {"task": "spellingbee", "args": {"size": 30}},
                {"task": "simplespelling", "args": {"size": 10}, "repeat": 2},
            ]
        },
    }
    d.update(over)
    return d


@pytest.mark.parametrize(
    "change,message",
    [
        ({"seeed": 1}, "unknown field(s) seeed"),
        ({"splits": {"train": [{"task": "nope"}]}}, "splits.train.tasks[0].task: unknown task 'nope'"),
        ({"splits": {"train": [{"task": "arc", "repeat": 2, "weight": 1.0}]}}, "one of repeat, weight"),
        ({"splits": {"train": [{"task": "arc", "proportion": 0.5}, {"task": "mmlu"}]}}, "every task a"),
        (
            {"splits": {"train": [{"task": "arc", "slice": {"start": 5, "stop": 2}}]}},
            "slice.stop: must be >= 5",
        ),
        ({"splits": {"train": {"mode": "random", "tasks": [{"task": "arc"}]}}}, "mode: must be shuffle or"),
        ({"seed": "x"}, "seed: expected an integer"),
        ({"splits": {}}, "'splits' must map"),
    ],
)
def test_spec_errors_name_the_field(change, message):
    with pytest.raises(SpecError) as err:
        parse_spec(spec_dict(**change), where="my.yaml")
    assert str(err.value).startswith("my.yaml") and message in str(err.value)


def test_spec_resolves_paths_against_its_folder(tmp_path):
    spec = parse_spec(
        {"splits": {"train": [{"task": "customjson", "args": {"filepath": "data/c.jsonl"}}]}}, base=tmp_path
    )
    assert spec.splits["train"].entries[0].args["filepath"] == str(tmp_path / "data/c.jsonl")
    assert spec.raw["splits"]["train"]["tasks"][0]["args"]["filepath"] == str(tmp_path / "data/c.jsonl")


# -- rows ----------------------------------------------------------------------------------------------


def test_rows_follow_the_verifiers_schema_with_system_prompt_and_few_shot(shared_data):
    task = GSM8K("main", "test", path=shared_data / "gsm8k")
    entry = Entry("gsm8k", "math", {}, system_prompt="Think step by step.", few_shot=2)
    row = make_row(task, entry, 5, 123)
    conv = task[5]
    assert row["example_id"] == 123 and row["task"] == "math"
    roles = [m["role"] for m in row["prompt"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert row["prompt"][0]["content"] == "Think step by step."
    assert row["prompt"][-1]["content"] == conv["messages"][0]["content"]
    shots = [row["prompt"][1]["content"], row["prompt"][3]["content"]]
    assert conv["messages"][0]["content"] not in shots and len(set(shots)) == 2
    assert row["answer"] == task.reference_answer(conv)
    # messages = the prompt + the reference solution, with the tool parts kept beside the flat text
    assert [m["content"] for m in row["messages"][:-1]] == [m["content"] for m in row["prompt"]]
    final = row["messages"][-1]
    assert final["parts"] == conv["messages"][1]["content"]
    assert final["content"].endswith(f"#### {row['answer']}")
    assert json.loads(row["info"]) == {"task_row": 5}
    assert make_row(task, entry, 5, 123) == row  # few-shot picks are fixed per row


def test_a_conversations_own_system_message_wins(tmp_path):
    from taskray.tasks.smoltalk import SmolTalk

    file = tmp_path / "talk.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "own"},
                {"role": "user", "content": "q0"},
                {"role": "assistant", "content": "a0"},
            ]
        },
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
    ]
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = SmolTalk("train", path=file, shuffle_seed=None)
    entry = Entry("smoltalk", "smoltalk", {}, system_prompt="spec", few_shot=1)
    first, second = make_row(task, entry, 0, 0), make_row(task, entry, 1, 1)
    assert [(m["role"], m["content"]) for m in first["prompt"]] == [
        ("system", "own"),
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q0"),
    ]
    assert [(m["role"], m["content"]) for m in second["prompt"]] == [
        ("system", "spec"),
        ("user", "q0"),
        ("assistant", "a0"),
        ("user", "q1"),
    ]
    assert first["answer"] == "a0" and first["messages"][-1]["content"] == "a0"


def test_shard_layout_does_not_depend_on_the_seed():
    plans = [
        build_split("train", parse_spec(spec_dict(seed=s, shard_size_mb=0.01)).splits["train"], s)
        for s in (0, 1)
    ]
    spec = parse_spec(spec_dict(shard_size_mb=0.01))
    assert rows_per_shard(plans[0], spec) == rows_per_shard(plans[1], spec)
    rows = [render_rows(p, 0, len(p)) for p in plans]
    assert len(rows[0]) == 30 + 20
    assert rows[0] != rows[1]
    key = lambda r: r["example_id"]  # noqa: E731
    assert sorted(rows[0], key=key) == sorted(rows[1], key=key)
    assert sorted(map(key, rows[0])) == list(range(50))


def test_listing_a_task_twice_oversamples_it():
    spec = parse_spec(
        {
            "splits": {
                "train": [
                    {"task": "spellingbee", "args": {"size": 5}},
                    {"task": "spellingbee", "args": {"size": 5}},
                    {"task": "simplespelling", "args": {"size": 5}, "weight": 0.4},
                ]
            }
        }
    )
    plan = build_split("train", spec.splits["train"], 0)
    assert plan.tasks[0] is plan.tasks[1]  # built once
    rows = render_rows(plan, 0, len(plan))
    bee = [r["prompt"][-1]["content"] for r in rows if r["task"] == "spellingbee"]
    assert len(bee) == 10 and sorted(bee) == sorted(
        2 * [SpellingBee(size=5)[i]["messages"][0]["content"] for i in range(5)]
    )
    spelled = {r["prompt"][-1]["content"] for r in rows if r["task"] == "simplespelling"}
    assert len(spelled) == 2
    assert spelled <= {SimpleSpelling(size=5)[i]["messages"][0]["content"] for i in range(5)}
    assert plan.rows_per_task() == {"spellingbee": 10, "simplespelling": 2}


def test_spec_proportions_with_stopping_rules():
    def plan(stopping: str):
        spec = parse_spec(
            {
                "splits": {
                    "train": {
                        "stopping": stopping,
                        "tasks": [
                            {"task": "spellingbee", "args": {"size": 100}, "proportion": 0.25},
                            {"task": "simplespelling", "args": {"size": 60}, "proportion": 0.75},
                        ],
                    }
                }
            }
        )
        return build_split("train", spec.splits["train"], 0)

    # first_exhausted: simplespelling runs out first, after 60 / 0.75 = 80 rows
    assert plan("first_exhausted").rows_per_task() == {"spellingbee": 20, "simplespelling": 60}
    # all_exhausted: spellingbee is seen whole after 100 / 0.25 = 400 rows, simplespelling 5 times over
    p = plan("all_exhausted")
    assert p.rows_per_task() == {"spellingbee": 100, "simplespelling": 300}
    spelled = [r["prompt"][-1]["content"] for r in render_rows(p, 0, len(p)) if r["task"] == "simplespelling"]
    assert len(set(spelled)) <= 60 and all(spelled.count(s) % 5 == 0 for s in set(spelled))


def test_shards_come_close_to_the_target_size():
    from taskray.mix.split import parquet_bytes

    bees = [{"task": "spellingbee", "args": {"size": 5000}}]
    spec = parse_spec({"shard_size_mb": 0.1, "splits": {"train": bees}})
    plan = build_split("train", spec.splits["train"], 0)
    per_shard = rows_per_shard(plan, spec)
    size = len(parquet_bytes(render_rows(plan, 0, per_shard)))
    assert 0.5 < size / (0.1 * 2**20) < 1.5, (per_shard, size)


def test_the_example_spec_builds_from_the_shipped_excerpts():
    from taskray.mix.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "mix.yaml")
    train = build_split("train", spec.splits["train"], spec.seed)
    assert train.rows_per_task() == {
        "arc-easy": 200,
        "arc-challenge": 400,
        "gsm8k": 150,
        "spellingbee": 300,
        "customjson": 30,
    }
    evals = build_split("eval", spec.splits["eval"], spec.seed)
    assert evals.rows_per_task() == {"gsm8k": 50, "humaneval": 20}
    row = make_row(evals.tasks[0], evals.entries[0], 0, 0)
    assert len(row["prompt"]) == 1 + 2 * 2  # two solved examples, then the question
