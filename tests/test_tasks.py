"""Each task against the real files in ../shared/data: counts, fields, a known row's rendered text."""

from __future__ import annotations

import csv
import gzip
import json
import re

import pytest

from taskray.tasks import TaskMixture, TaskSequence, render_mc
from taskray.tasks.arc import ARC, normalize
from taskray.tasks.common import Task, content_text
from taskray.tasks.customjson import CustomJSON
from taskray.tasks.gsm8k import GSM8K, extract_answer, solution_parts
from taskray.tasks.humaneval import HumanEval
from taskray.tasks.mmlu import MMLU
from taskray.tasks.smoltalk import SmolTalk
from taskray.tasks.spellingbee import TEMPLATES, SimpleSpelling, SpellingBee, load_words


def find(task: Task, needle: str) -> dict:
    """The one conversation whose user message contains `needle` (tasks are shuffled like nanochat's)."""
    hits = [task[i] for i in range(len(task)) if needle in content_text(task[i]["messages"][0]["content"])]
    assert len(hits) == 1, f"{needle!r} found {len(hits)} times"
    return hits[0]


# -- the Task API -----------------------------------------------------------------------------------------


def test_slicing_matches_nanochat_semantics():
    full = SpellingBee(size=20)
    sliced = SpellingBee(size=20, start=3, stop=15, step=4)
    assert len(sliced) == 3  # rows 3, 7, 11
    assert [sliced[i] for i in range(3)] == [full[3], full[7], full[11]]
    capped = SpellingBee(size=20, start=10, stop=50)
    assert len(capped) == 10 and capped.stop == 20  # stop past the end is capped
    for bad in (dict(start=-1), dict(start=5, stop=2), dict(step=0)):
        with pytest.raises(ValueError):
            SpellingBee(size=20, **bad)
    with pytest.raises(TypeError):
        full["3"]


def test_render_mc_is_nanochat_format():
    assert render_mc("Which is red?", ["A", "B"], ["grass", "blood"]) == (
        "Multiple Choice question: Which is red?\n- grass=A\n- blood=B\n\n"
        "Respond only with the letter of the correct answer."
    )


def test_mixture_and_sequence_api():
    a, b = SimpleSpelling(size=5), SpellingBee(size=3)
    seq = TaskSequence([a, b])
    assert len(seq) == 8
    assert [seq[i] for i in range(8)] == [a[i] for i in range(5)] + [b[i] for i in range(3)]
    mix = TaskMixture([a, b, b], seed=1)  # listing b twice oversamples it
    rows = [json.dumps(mix[i], sort_keys=True) for i in range(len(mix))]
    assert len(rows) == 11
    assert sorted(rows) == sorted(
        [json.dumps(a[i], sort_keys=True) for i in range(5)]
        + 2 * [json.dumps(b[i], sort_keys=True) for i in range(3)]
    )
    other = TaskMixture([a, b, b], seed=2)
    assert [json.dumps(other[i], sort_keys=True) for i in range(11)] != rows
    assert sorted(json.dumps(other[i], sort_keys=True) for i in range(11)) == sorted(rows)
    with pytest.raises(IndexError):
        mix[11]
    weighted = TaskMixture([a, b], weights=[1, 2])
    assert len(weighted) == 5 + 6


# -- ARC -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subset,split,count",
    [
        ("ARC-Easy", "test", 2376),
        ("ARC-Easy", "validation", 570),
        ("ARC-Challenge", "test", 1172),
        ("ARC-Challenge", "validation", 299),
    ],
)
def test_arc_counts(shared_data, subset, split, count):
    task = ARC(subset, split, path=shared_data / "arc")
    assert len(task) == count
    assert task.eval_type == "categorical"
    ex = task[0]
    assert ex["messages"][1]["content"] in ex["letters"]


def test_arc_known_row_and_hub_schema(shared_data):
    task = ARC("ARC-Challenge", "validation", path=shared_data / "arc")
    ex = find(task, "Juan and LaKeisha roll a few objects down a ramp.")
    assert ex["messages"][0]["content"] == (
        "Multiple Choice question: Juan and LaKeisha roll a few objects down a ramp. They want to see which "
        "object rolls the farthest. What should they do so they can repeat their investigation?\n"
        "- Put the objects in groups.=A\n- Change the height of the ramp.=B\n"
        "- Choose different objects to roll.=C\n- Record the details of the investigation.=D\n\n"
        "Respond only with the letter of the correct answer."
    )
    assert ex["messages"][1] == {"role": "assistant", "content": "D"}
    assert task.evaluate(ex, "D") and not task.evaluate(ex, "A")
    # the AI2 layout and the Hub's parquet layout normalise to the same row
    line = (shared_data / "arc/ARC-c/ARC-Challenge-Dev.jsonl").read_text().splitlines()[0]
    ai2 = json.loads(line)
    hub = {
        "id": ai2["id"],
        "question": ai2["question"]["stem"],
        "answerKey": ai2["answerKey"],
        "choices": {
            "text": [c["text"] for c in ai2["question"]["choices"]],
            "label": [c["label"] for c in ai2["question"]["choices"]],
        },
    }
    assert normalize(ai2) == normalize(hub)


# -- MMLU ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split,count", [("test", 14079), ("dev", 285), ("validation", 1542)])
def test_mmlu_counts(shared_data, split, count):
    task = MMLU("all", split, path=shared_data / "mmlu")
    assert len(task) == count
    subjects = {task.ds[i]["subject"] for i in range(len(task))}
    assert len(subjects) == 57


def test_mmlu_known_row(shared_data):
    task = MMLU("all", "test", path=shared_data / "mmlu")
    ex = find(task, "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.")
    assert ex["messages"][0]["content"] == (
        "Multiple Choice question: Find the degree for the given field extension Q(sqrt(2), sqrt(3), "
        "sqrt(18)) over Q.\n- 0=A\n- 4=B\n- 2=C\n- 6=D\n\nRespond only with the letter of the correct answer."
    )
    assert ex["messages"][1]["content"] == "B"
    assert ex["subject"] == "abstract_algebra"
    assert task.evaluate(ex, "B") and not task.evaluate(ex, "C")


def test_mmlu_bad_csv_names_file_and_line(tmp_path):
    (tmp_path / "test").mkdir()
    bad = tmp_path / "test" / "anatomy_test.csv"
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows([["q1", "a", "b", "c", "d", "A"], ["q2", "a", "b", "c", "d", "E"]])
    with pytest.raises(ValueError, match=r"anatomy_test\.csv:2"):
        MMLU("all", "test", path=tmp_path)


# -- GSM8K -----------------------------------------------------------------------------------------------


def official_extract(answer: str) -> str:
    """openai/grade-school-math's normalisation, as its dataset.py does it."""
    match = re.compile(r"#### (\-?[0-9\.\,]+)").search(answer)
    return match.group(1).strip().replace(",", "")


@pytest.mark.parametrize("split,count", [("test", 1319), ("train", 7473)])
def test_gsm8k_parts_and_answers_on_every_row(shared_data, split, count):
    task = GSM8K("main", split, path=shared_data / "gsm8k")
    assert len(task) == count
    originals = {}
    with open(shared_data / f"gsm8k/{split}.jsonl") as f:
        for line in f:
            row = json.loads(line)
            originals[row["question"]] = row["answer"]
    for i in range(len(task)):
        ex = task[i]
        answer = originals[ex["messages"][0]["content"]]
        parts = ex["messages"][1]["content"]
        assert content_text(parts) == answer  # the parts lose nothing
        assert task.reference_answer(ex) == official_extract(answer)
        assert sum(p["type"] == "python" for p in parts) == answer.count("<<")


def test_gsm8k_known_row_tool_parts(shared_data):
    task = GSM8K("main", "test", path=shared_data / "gsm8k")
    ex = find(task, "Janet’s ducks lay 16 eggs per day.")
    assert ex["messages"][1]["content"] == [
        {"type": "text", "text": "Janet sells 16 - 3 - 4 = "},
        {"type": "python", "text": "16-3-4"},
        {"type": "python_output", "text": "9"},
        {"type": "text", "text": "9 duck eggs a day.\nShe makes 9 * 2 = $"},
        {"type": "python", "text": "9*2"},
        {"type": "python_output", "text": "18"},
        {"type": "text", "text": "18 every day at the farmer’s market.\n#### 18"},
    ]
    assert task.evaluate(ex, "so she makes\n#### 18") == 1
    assert task.evaluate(ex, "#### 19") == 0
    assert task.evaluate(ex, "18") == 0  # no #### marker, no answer


def test_gsm8k_answer_extraction_edge_cases():
    assert extract_answer("#### 1,234") == "1234"
    assert extract_answer("x\n#### -5.5") == "-5.5"
    assert extract_answer("no marker") is None
    assert solution_parts("a <<2+2>> b") == [
        {"type": "text", "text": "a "},
        {"type": "python", "text": "2+2"},
        {"type": "python_output", "text": ""},
        {"type": "text", "text": " b"},
    ]


# -- HumanEval -------------------------------------------------------------------------------------------


def test_humaneval_rows(shared_data):
    task = HumanEval(path=shared_data / "humaneval")
    assert len(task) == 164
    with gzip.open(shared_data / "humaneval/HumanEval.jsonl.gz", "rt") as f:
        problems = {p["task_id"]: p for p in map(json.loads, f)}
    ids = set()
    for i in range(len(task)):
        ex = task[i]
        p = problems[ex["task_id"]]
        ids.add(ex["task_id"])
        assert ex["messages"][0]["content"] == p["prompt"]
        assert ex["messages"][1]["content"] == p["prompt"] + "\n" + p["canonical_solution"]
        assert ex["entry_point"] == p["entry_point"] and ex["test"] == p["test"]
    assert len(ids) == 164


def test_humaneval_evaluate_runs_in_the_sandbox(shared_data):
    task = HumanEval(path=shared_data / "humaneval")
    ex = find(task, "def has_close_elements(")
    assert task.evaluate(ex, ex["messages"][1]["content"]) is True
    assert task.evaluate(ex, "def has_close_elements(numbers, threshold):\n    return False\n") is False
    # exit-code forgery is a failure here too
    assert task.evaluate(ex, "import sys\nsys.exit(0)\ndef has_close_elements(n, t):\n    return 1") is False
    pool = task._pool
    task.close()
    assert task._pool is None and pool.containers() == []


ALWAYS_EQUAL = "class _X:\n    def __eq__(self, other):\n        return True\n\n"
CHAIN_MAP = "def merged(a, b):\n    import collections\n    return collections.ChainMap({})\n"


def test_humaneval_evaluate_judges_values_as_the_eval_job_does(shared_data):
    """As a reward, a pass cannot be won with a rigged value (an object whose == is always true); a
    problem whose reference answer returns a type other than plain data has that type allowed."""
    task = HumanEval(path=shared_data / "humaneval")
    ex = find(task, "def has_close_elements(")
    rigged = ALWAYS_EQUAL + "def has_close_elements(numbers, threshold):\n    return _X()\n"
    assert task.evaluate(ex, rigged) is False
    merged = {
        "task_id": "Merge/0",
        "messages": [
            {"role": "user", "content": "def merged(a: dict, b: dict):\n"},
            {"role": "assistant", "content": CHAIN_MAP.format("a, b")},
        ],
        "entry_point": "merged",
        "test": "def check(candidate):\n    assert candidate({'x': 1}, {'y': 2}) == {'x': 1, 'y': 2}\n",
    }
    assert task.evaluate(merged, merged["messages"][1]["content"]) is True
    assert task.evaluate(merged, CHAIN_MAP.format("b, a")) is True
    assert task.evaluate(merged, ALWAYS_EQUAL + "def merged(a, b):\n    return _X()\n") is False
    task.close()


# -- SmolTalk (no local copy: a small file in the Hub's schema) ------------------------------------------


def smoltalk_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
        if i % 3 == 0:
            msgs = [{"role": "system", "content": "be brief"}, *msgs]
        rows.append({"messages": msgs, "source": "test"})
    return rows


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_smoltalk_from_hub_schema_files(tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = smoltalk_rows(30)
    file = tmp_path / f"train.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), file)
    else:
        file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = SmolTalk("train", path=file)
    assert len(task) == 30
    got = sorted((task[i]["messages"] for i in range(30)), key=lambda m: m[-1]["content"])
    assert got == sorted((r["messages"] for r in rows), key=lambda m: m[-1]["content"])
    assert task.reference_answer(task[0]) == task[0]["messages"][-1]["content"]


def test_smoltalk_folder_in_hub_layout_keeps_splits_apart(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = smoltalk_rows(12)
    pq.write_table(pa.Table.from_pylist(rows[:8]), tmp_path / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[8:]), tmp_path / "test-00000-of-00001.parquet")
    assert len(SmolTalk("train", path=tmp_path)) == 8
    test = SmolTalk("test", path=tmp_path)
    assert sorted(test[i]["messages"][-1]["content"] for i in range(len(test))) == sorted(
        f"answer {i}" for i in range(8, 12)
    )


def test_smoltalk_bad_row(tmp_path):
    file = tmp_path / "bad.jsonl"
    file.write_text(
        json.dumps({"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "?"}]})
        + "\n"
    )
    task = SmolTalk("train", path=file)
    with pytest.raises(ValueError, match="message 0 has role 'assistant'"):
        task[0]


# -- SpellingBee / SimpleSpelling ------------------------------------------------------------------------


def test_spellingbee_counts_by_hand_then_checks_with_python():
    words = load_words()
    assert len(words) == 5000 and all(w.isalpha() and w.islower() for w in words)
    task = SpellingBee(size=300)
    for i in range(len(task)):
        ex = task[i]
        user, parts = ex["messages"][0]["content"], ex["messages"][1]["content"]
        word, letter = re.search(r"'(\w+)'\.count\('(\w)'\)", parts[2]["text"]).groups()
        assert word in words and word in user and letter in user
        count = word.count(letter)
        manual = parts[0]["text"]
        assert f"{word}:{','.join(word)}" in manual
        assert manual.count("hit!") == count and manual.endswith(f"By hand: {count}.")
        assert [p["type"] for p in parts] == ["text", "text", "python", "python_output", "text"]
        assert parts[3]["text"] == str(count)  # the python output is what python would print
        assert eval(parts[2]["text"]) == count  # noqa: S307 - a literal 'word'.count('x') built above
        assert task.reference_answer(ex) == str(count)
        assert task.evaluate(ex, f"#### {count}") == 1 and task.evaluate(ex, f"#### {count + 1}") == 0
    assert SpellingBee(size=300)[17] == task[17]  # deterministic
    assert SpellingBee(size=300, split="test")[17] != task[17]
    non_english = [t for t in TEMPLATES if not t.isascii()]
    assert len(non_english) >= 5


def test_simplespelling():
    task = SimpleSpelling(size=50)
    for i in range(50):
        user, answer = (m["content"] for m in task[i]["messages"])
        word = user.removeprefix("Spell the word: ")
        assert answer == word + ":" + ",".join(word)
        assert task.evaluate(task[i], answer)


# -- CustomJSON ------------------------------------------------------------------------------------------


def test_customjson_good_file(tmp_path):
    file = tmp_path / "conv.jsonl"
    convs = [
        [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]
        for i in range(4)
    ]
    file.write_text("\n".join(json.dumps(c) for c in convs) + "\n\n")
    task = CustomJSON(str(file))
    assert len(task) == 4 and task[2] == {"messages": convs[2]}


@pytest.mark.parametrize(
    "line,error",
    [
        ('{"role": "user"', "not valid JSON"),
        ('{"role": "user", "content": "x"}', "expected a JSON array"),
        ('[{"role": "user", "content": "x"}]', "at least 2 messages"),
        ('[{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]', "message 1 has role 'user'"),
        (
            '[{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}]',
            "content must be a string",
        ),
        ('[{"role": "user", "content": "x"}, {"content": "y"}]', "needs 'role' and 'content'"),
    ],
)
def test_customjson_bad_line_names_file_and_line(tmp_path, line, error):
    file = tmp_path / "conv.jsonl"
    good = json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    file.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(ValueError, match=re.escape(f"{file}:3: ") + ".*" + re.escape(error)):
        CustomJSON(str(file))
