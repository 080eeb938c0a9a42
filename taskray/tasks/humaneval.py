"""HumanEval: 164 Python functions to complete, graded by their unit tests.
https://huggingface.co/datasets/openai/openai_humaneval

Local file: the original `HumanEval.jsonl.gz` (the Hub's schema already). Grading runs the program in
taskray's Docker sandbox, never on the host: the task starts a small pool of containers on its first
`evaluate` and removes them with `close()` (or at exit).
"""

from __future__ import annotations

import atexit
from pathlib import Path

from taskray.evaluate import humaneval
from taskray.tasks.common import DatasetTask, load_rows


class HumanEval(DatasetTask):
    name = "humaneval"
    eval_type = "generative"

    def __init__(self, path: str | None = None, shuffle_seed: int | None = 42, **kwargs):
        super().__init__(**kwargs)

        def read_local(p: Path) -> tuple[list[dict], list[Path]]:
            file = p if p.is_file() else p / "HumanEval.jsonl.gz"
            return humaneval.load_problems(f"humaneval:{file}"), [file]  # the eval job's checked loader

        self.ds, self.source = load_rows(humaneval.HUB_ID, None, "test", path, read_local, shuffle_seed)
        self._allowed: dict[str, list[str]] = {}  # by task: types its reference returns (see evaluate)

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        # the prompt is the start of the program (imports, signature, docstring); the reference answer
        # is the whole function
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": humaneval.canonical_completion(row)},
        ]
        # what grading needs travels with the conversation (and into the exported `info`)
        return {
            "messages": messages,
            "task_id": row["task_id"],
            "entry_point": row["entry_point"],
            "test": row["test"],
        }

    def evaluate(self, conversation: dict, completion: str, timeout: float = 10.0) -> bool:
        """Run the completion against the problem's tests in the Docker sandbox. The completion may be
        a chat answer (a ```python block or a whole function) or a continuation of the prompt.

        Judged as the eval job judges (sandbox/runner.py): a pass needs the tests to pass on plain
        built-in values from an untouched interpreter. As a reward in training this matters most: an
        object whose == is always true or a patched builtin is what a policy learns to return first.
        A problem whose reference solution (the conversation's answer) returns another type has that
        type allowed.

        Raises `taskray.sandbox.client.InfraError` when the sandbox itself fails (after retries), so an
        infrastructure problem is never mistaken for a wrong answer."""
        from taskray.sandbox.client import RETURNED_TYPE

        problem = {
            "task_id": conversation["task_id"],
            "prompt": conversation["messages"][0]["content"],
            "entry_point": conversation["entry_point"],
            "test": conversation["test"],
        }
        sources, judge = humaneval.judged_parts(problem, completion)
        result = self._run(problem, sources, judge, timeout)
        if result.status == "failed" and RETURNED_TYPE in result.detail:
            allowed = self._reference_types(problem, conversation["messages"], timeout)
            if allowed:
                result = self._run(problem, sources, {**judge, "allowed_types": allowed}, timeout)
        return result.passed

    def _reference_types(self, problem: dict, messages: list[dict], timeout: float) -> list[str]:
        """The types other than plain data that the problem's reference solution returns (once per
        problem): those are honest answers to it."""
        if problem["task_id"] not in self._allowed:
            reference = messages[1]["content"] if len(messages) > 1 else None
            returns: list[str] = []
            if reference:
                probe = self._run(problem, *humaneval.probe_parts(problem, reference), timeout)
                returns = (probe.returns or []) if probe.passed else []
            self._allowed[problem["task_id"]] = returns
        return self._allowed[problem["task_id"]]

    def _run(self, problem: dict, sources: list[str], judge: dict, timeout: float):
        from taskray.sandbox.client import InfraError

        result = self._sandbox().run(sources, timeout, judge)
        if result.status == "infra_error":
            raise InfraError(
                f"{problem['task_id']}: sandbox failed after {result.attempts} attempts: {result.detail}"
            )
        return result

    def _sandbox(self):
        if getattr(self, "_pool", None) is None:
            from taskray.sandbox.pool import SandboxPool

            self._pool = SandboxPool(size=2)
            atexit.register(self.close)
        return self._pool

    def close(self) -> None:
        """Remove this task's sandbox containers (if `evaluate` started any)."""
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.close()
