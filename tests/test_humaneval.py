"""HumanEval loading, program assembly and pass@k: pure functions (the sandboxed run is in test_tasks)."""

from __future__ import annotations

import gzip
import json
import math
from itertools import combinations

import pytest

from taskray.evaluate.humaneval import (
    build_program,
    canonical_completion,
    extract_code,
    extract_imports,
    load_problems,
    load_samples,
    pass_at_k,
    pass_at_k_table,
    program_parts,
)


@pytest.fixture(scope="module")
def problems(shared_data):
    return load_problems(f"humaneval:{shared_data / 'humaneval' / 'HumanEval.jsonl.gz'}")


def test_loads_the_164_problems(problems, shared_data):
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0" and problems[0]["entry_point"] == "has_close_elements"
    # a bare path works as well as `humaneval:PATH`
    assert load_problems(str(shared_data / "humaneval" / "HumanEval.jsonl.gz")) == problems


def test_bad_problem_files_are_named_with_the_line(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"task_id": "a"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: problem 'a' lacks text field"):
        load_problems(f"humaneval:{bad_json}")
    bad_json.write_text("\nnot json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_problems(f"humaneval:{bad_json}")
    with pytest.raises(ValueError, match="expected `humaneval`"):
        load_problems("no/such/file.jsonl")
    with pytest.raises(ValueError, match="no such file"):  # BadInput is a ValueError
        load_problems("humaneval:no/such/file.jsonl")
    not_gzip = tmp_path / "x.jsonl.gz"
    not_gzip.write_text("plain")
    with pytest.raises(ValueError, match="cannot read as gzip JSONL"):
        load_problems(str(not_gzip))


def test_samples_are_numbered_per_task_and_checked(problems, tmp_path):
    path = tmp_path / "s.jsonl.gz"
    rows = [
        {"task_id": "HumanEval/1", "completion": "a"},
        {"task_id": "HumanEval/0", "completion": "b"},
        {"task_id": "HumanEval/1", "completion": "c"},
    ]
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert [(s["task_id"], s["sample"]) for s in load_samples(path, problems)] == [
        ("HumanEval/1", 0),
        ("HumanEval/0", 0),
        ("HumanEval/1", 1),
    ]
    unknown = tmp_path / "u.jsonl"
    unknown.write_text(
        '{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "Nope/1", "completion": "x"}\n'
    )
    with pytest.raises(ValueError, match=r"u.jsonl:2: task_id 'Nope/1' is not among the problems"):
        load_samples(unknown, problems)
    unknown.write_text('{"task_id": "HumanEval/0"}\n')
    with pytest.raises(ValueError, match=r"u.jsonl:1: a sample needs text fields"):
        load_samples(unknown, problems)


def test_program_assembly_follows_nanochat():
    problem = {
        "task_id": "T/0",
        "prompt": 'import math\nfrom typing import List\n\n\ndef f(x: List[int]) -> int:\n    """doc"""\n',
        "canonical_solution": "    return sum(x)\n",
        "test": "def check(c):\n    assert c([1, 2]) == 3\n",
        "entry_point": "f",
    }
    assert extract_imports(problem["prompt"]) == "import math\nfrom typing import List"
    chat = "Here you go:\n```python\ndef f(x):\n    return sum(x)\n```\nand another\n```python\nbad\n```"
    assert extract_code(chat) == "def f(x):\n    return sum(x)"
    assert build_program(problem, chat) == (
        "import math\nfrom typing import List\n\ndef f(x):\n    return sum(x)\n\n"
        "def check(c):\n    assert c([1, 2]) == 3\n\ncheck(f)"
    )
    # a human-eval style continuation (no `def f`) is appended to the prompt
    candidate, tests = program_parts(problem, "    return sum(x)\n")
    assert candidate.endswith(problem["prompt"] + "    return sum(x)\n") and tests.endswith("check(f)")
    assert canonical_completion(problem) == problem["prompt"] + "\n" + problem["canonical_solution"]


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The definition: the share of k-subsets of the n samples that contain a passing one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    "n, c, k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 3), (6, 1, 5), (8, 3, 8), (7, 0, 4)]
)
def test_pass_at_k_matches_its_definition(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k))


def test_pass_at_k_large_n_and_bad_input():
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100))
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(5, 1, 10)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(5, 6, 1)
    table = pass_at_k_table({"a": (10, 1), "b": (12, 12)})
    assert set(table) == {"pass@1", "pass@10"}  # no pass@100 with 10 samples per task
    assert table["pass@1"] == pytest.approx((0.1 + 1.0) / 2)
