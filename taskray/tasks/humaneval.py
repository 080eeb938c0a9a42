"""HumanEval: 164 Python functions to complete, graded by their unit tests.
https://huggingface.co/datasets/openai/openai_humaneval

Local file: the original `HumanEval.jsonl.gz` (the Hub's schema already). Grading runs the program in
taskray's Docker sandbox (`taskray.humaneval.check_completion`), never on the host.
"""

from __future__ import annotations

from pathlib import Path

from taskray import humaneval
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

    def evaluate(self, conversation: dict, completion: str) -> bool:
        """Run the completion against the problem's tests in the Docker sandbox. The completion may be
        a chat answer (a ```python block or a whole function) or a continuation of the prompt."""
        problem = {
            "task_id": conversation["task_id"],
            "prompt": conversation["messages"][0]["content"],
            "entry_point": conversation["entry_point"],
            "test": conversation["test"],
        }
        return bool(humaneval.check_completion(problem, completion))
