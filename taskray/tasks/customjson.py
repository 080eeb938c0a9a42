"""Conversations from a JSONL file: one JSON array of messages per line.

Example line: [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
Every line is checked when the task is built; a bad one is an error naming the file and the line.
"""

from __future__ import annotations

import json
from pathlib import Path

from taskray.tasks.common import Task, check_conversation, sha256_file


class CustomJSON(Task):
    name = "customjson"
    eval_type = "generative"

    def __init__(self, filepath: str, **kwargs):
        super().__init__(**kwargs)
        self.filepath = Path(filepath)
        if not self.filepath.is_file():
            raise FileNotFoundError(f"{filepath}: no such JSONL file")
        self.conversations = []
        with open(self.filepath, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{filepath}:{lineno}"
                try:
                    messages = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                self.conversations.append(check_conversation(messages, where))
        self.source = {"files": {self.filepath.name: sha256_file(self.filepath)}}

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return {"messages": self.conversations[index]}
