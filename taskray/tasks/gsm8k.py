"""GSM8K: grade-school math word problems with worked solutions.
https://huggingface.co/datasets/openai/gsm8k

Solutions embed calculator calls as `<<48/2=24>>`; they become `python` / `python_output` parts of the
assistant message, so a model learns to call a tool. Local files are the original repo's jsonl
(`train.jsonl`, `test.jsonl`, `*_socratic.jsonl`), already in the Hub's schema (question, answer).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from taskray.tasks.common import DatasetTask, load_rows

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
TOOL_CALL_RE = re.compile(r"(<<[^>]+>>)")


def extract_answer(completion: str) -> str | None:
    """The number after `#### `, commas removed: the official normalisation
    (openai/grade-school-math, grade_school_math/dataset.py, extract_answer)."""
    match = ANSWER_RE.search(completion)
    return match.group(1).strip().replace(",", "") if match else None


def solution_parts(answer: str) -> list[dict[str, str]]:
    """The solution as text / python / python_output parts, splitting each `<<expr=result>>`."""
    parts = []
    for piece in TOOL_CALL_RE.split(answer):
        if piece.startswith("<<") and piece.endswith(">>"):
            expr, _, result = piece[2:-2].rpartition("=")
            if not _:  # no '=': the whole call is the expression
                expr, result = result, ""
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "python_output", "text": result})
        else:
            parts.append({"type": "text", "text": piece})
    return parts


class GSM8K(DatasetTask):
    name = "gsm8k"
    eval_type = "generative"

    def __init__(
        self, subset: str, split: str, path: str | None = None, shuffle_seed: int | None = 42, **kwargs
    ):
        super().__init__(**kwargs)
        if subset not in ("main", "socratic"):
            raise ValueError(f"GSM8K subset must be main|socratic, got {subset!r}")
        if split not in ("train", "test"):
            raise ValueError(f"GSM8K split must be train|test, got {split!r}")

        def read_local(p: Path) -> tuple[list[dict], list[Path]]:
            name = f"{split}.jsonl" if subset == "main" else f"{split}_socratic.jsonl"
            file = p if p.is_file() else p / name
            rows = []
            with open(file, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
                            raise ValueError(f"{file}:{lineno}: a GSM8K row needs string question and answer")
                        rows.append({"question": row["question"], "answer": row["answer"]})
            return rows, [file]

        self.ds, self.source = load_rows("openai/gsm8k", subset, split, path, read_local, shuffle_seed)

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        messages = [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": solution_parts(row["answer"])},
        ]
        return {"messages": messages}

    def reference_answer(self, conversation: dict) -> str:
        return extract_answer(conversation["messages"][-1]["content"][-1]["text"]) or ""

    def evaluate(self, conversation: dict, assistant_response: str) -> int:
        """1 if the completion's `#### N` matches the reference's, else 0."""
        if not isinstance(assistant_response, str):
            raise TypeError("GSM8K grades a string completion")
        last = conversation["messages"][-1]
        if last["role"] != "assistant" or not isinstance(last["content"], list):
            raise ValueError("the last message must be the assistant's solution, as parts")
        return int(extract_answer(assistant_response) == extract_answer(last["content"][-1]["text"]))

    def reward(self, conversation: dict, assistant_response: str) -> float:
        return float(self.evaluate(conversation, assistant_response))
