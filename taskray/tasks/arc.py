"""The ARC dataset from Allen AI: grade-school science questions, multiple choice.
https://huggingface.co/datasets/allenai/ai2_arc

Local files are AI2's original jsonl (`question.stem`, `question.choices[{label, text}]`), e.g.
`arc/ARC-e/ARC-Easy-Test.jsonl`; they are normalised to the Hub's rows (`choices: {text, label}`).
"""

from __future__ import annotations

import json
from pathlib import Path

from taskray.tasks.common import DatasetTask, load_rows, render_mc

SUBSETS = {"ARC-Easy": ("ARC-e", "ARC-Easy"), "ARC-Challenge": ("ARC-c", "ARC-Challenge")}
SPLITS = {"train": "Train", "validation": "Dev", "test": "Test"}  # Hub split -> AI2 file suffix


def normalize(row: dict) -> dict:
    """One ARC row in the Hub's schema, from either the Hub's or AI2's original layout."""
    if isinstance(row["question"], dict):  # AI2 original
        choices = row["question"]["choices"]
        row = {
            "id": row["id"],
            "question": row["question"]["stem"],
            "answerKey": row["answerKey"],
            "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
        }
    return {k: row[k] for k in ("id", "question", "choices", "answerKey")}


class ARC(DatasetTask):
    name = "arc"
    eval_type = "categorical"

    def __init__(
        self, subset: str, split: str, path: str | None = None, shuffle_seed: int | None = 42, **kwargs
    ):
        super().__init__(**kwargs)
        if subset not in SUBSETS:
            raise ValueError(f"ARC subset must be ARC-Easy or ARC-Challenge, got {subset!r}")
        if split not in SPLITS:
            raise ValueError(f"ARC split must be train|validation|test, got {split!r}")

        def read_local(p: Path) -> tuple[list[dict], list[Path]]:
            folder, stem = SUBSETS[subset]
            # a folder holding AI2's layout (arc/ARC-e/ARC-Easy-Test.jsonl), or one jsonl file
            file = p if p.is_file() else p / folder / f"{stem}-{SPLITS[split]}.jsonl"
            if not file.is_file():
                raise FileNotFoundError(f"{file}: ARC {subset} {split} not found under {p}")
            with open(file, encoding="utf-8") as f:
                rows = [normalize(json.loads(line)) for line in f if line.strip()]
            return rows, [file]

        self.ds, self.source = load_rows("allenai/ai2_arc", subset, split, path, read_local, shuffle_seed)

    def get_example(self, index: int) -> dict:
        row = normalize(self.ds[index])
        letters = row["choices"]["label"]  # usually A-D, a few rows use 1-4 or have 3 or 5 choices
        if row["answerKey"] not in letters:
            raise ValueError(f"ARC row {row['id']}: answer {row['answerKey']!r} is not one of {letters}")
        messages = [
            {"role": "user", "content": render_mc(row["question"], letters, row["choices"]["text"])},
            {"role": "assistant", "content": row["answerKey"]},
        ]
        # letters: evaluation narrows the model's prediction to one of them
        return {"messages": messages, "letters": letters}

    def evaluate(self, conversation: dict, assistant_response: str) -> bool:
        if assistant_response not in conversation["letters"]:
            raise ValueError(f"ARC answer {assistant_response!r} must be one of {conversation['letters']}")
        return assistant_response == conversation["messages"][-1]["content"]
