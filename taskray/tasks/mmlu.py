"""MMLU: multiple-choice questions across 57 subjects.
https://huggingface.co/datasets/cais/mmlu

Local files are the original release's header-less CSVs (question, A, B, C, D, answer letter), one per
subject: `mmlu/test/<subject>_test.csv`, `mmlu/val/..._val.csv`, `mmlu/dev/..._dev.csv`,
`mmlu/auxiliary_train/*.csv`. They are normalised to the Hub's rows (question, subject, choices, answer).
"""

from __future__ import annotations

import csv
from pathlib import Path

from taskray.tasks.common import DatasetTask, load_rows, render_mc

LOCAL_DIRS = {"test": "test", "validation": "val", "dev": "dev", "train": "auxiliary_train"}


def read_csv(file: Path, subject: str) -> list[dict]:
    rows = []
    with open(file, newline="", encoding="utf-8") as f:
        for lineno, rec in enumerate(csv.reader(f), 1):
            if len(rec) != 6 or rec[5] not in MMLU.letters:
                raise ValueError(f"{file}:{lineno}: expected question,A,B,C,D,answer-letter; got {rec!r}")
            rows.append(
                {
                    "question": rec[0],
                    "subject": subject,
                    "choices": rec[1:5],
                    "answer": MMLU.letters.index(rec[5]),
                }
            )
    return rows


class MMLU(DatasetTask):
    name = "mmlu"
    eval_type = "categorical"
    letters = ("A", "B", "C", "D")

    def __init__(
        self, subset: str, split: str, path: str | None = None, shuffle_seed: int | None = 42, **kwargs
    ):
        super().__init__(**kwargs)
        if subset not in ("all", "auxiliary_train"):
            raise ValueError(f"subset {subset!r} must be all|auxiliary_train")
        if split not in ("train", "validation", "dev", "test"):
            raise ValueError(f"split {split!r} must be train|validation|dev|test")
        if subset == "auxiliary_train" and split != "train":
            raise ValueError("auxiliary_train must be split into train")
        self.subset, self.split = subset, split

        def read_local(p: Path) -> tuple[list[dict], list[Path]]:
            folder = p / LOCAL_DIRS[split]
            files = sorted(folder.glob("*.csv"))  # sorted by subject, the Hub's order
            if not files:
                raise FileNotFoundError(f"{folder}: no MMLU CSV files for split {split!r}")
            rows = []
            for file in files:
                subject = file.stem.removesuffix(f"_{LOCAL_DIRS[split]}")
                rows += read_csv(file, "" if subset == "auxiliary_train" else subject)
            return rows, files

        self.ds, self.source = load_rows("cais/mmlu", subset, split, path, read_local, shuffle_seed)
        if path is None and subset == "auxiliary_train":
            # the Hub wraps each auxiliary_train row in a 'train' field
            self.ds = self.ds.map(lambda row: row["train"], remove_columns=["train"])

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        if len(row["choices"]) != 4:
            raise ValueError(f"MMLU row {index} should have 4 choices, has {len(row['choices'])}")
        messages = [
            {"role": "user", "content": render_mc(row["question"], self.letters, row["choices"])},
            {"role": "assistant", "content": self.letters[row["answer"]]},
        ]
        # subject: for metrics per subject; letters: to clamp the prediction at evaluation
        return {"messages": messages, "subject": row["subject"], "letters": list(self.letters)}

    def evaluate(self, conversation: dict, assistant_response: str) -> bool:
        if assistant_response not in self.letters:
            raise ValueError(f"MMLU answer {assistant_response!r} must be one of {self.letters}")
        return assistant_response == conversation["messages"][-1]["content"]
