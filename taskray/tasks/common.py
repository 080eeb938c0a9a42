"""The Task API, compatible with nanochat's `tasks/common.py`.

A Task is a dataset of conversations plus, often, a way to grade a completion. A conversation is a dict
with `messages` (role + content, where an assistant's content may be a list of parts such as python tool
calls) and any extra fields evaluation needs (`letters`, `subject`, `test`, ...).

Tasks slice lazily (`Task(start, stop, step)`), and TaskMixture / TaskSequence combine them; unlike
nanochat's, the mixture keeps no per-row list (see taskray/tasks/mixture.py), so it scales to 10^7 rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from taskray.tasks.mixture import mixture_index

logger = logging.getLogger(__name__)

Conversation = dict[str, Any]


class Task:
    """A lightweight logical view (start, stop, step) over a dataset of conversations."""

    name = "task"  # the `task` column of exported rows, unless the spec names the entry

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        # the same checks as nanochat, as errors that survive `python -O`
        if not start >= 0:
            raise ValueError(f"Start must be non-negative, got {start}")
        if not (stop is None or stop >= start):
            raise ValueError(f"Stop should be greater than or equal to start, got {stop} and {start}")
        if not step >= 1:
            raise ValueError(f"Step must be strictly positive, got {step}")
        self.start, self.stop, self.step = start, stop, step

    @property
    def eval_type(self) -> str:
        """'generative' or 'categorical'."""
        raise NotImplementedError

    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> Conversation:
        raise NotImplementedError

    def evaluate(self, conversation: Conversation, completion: str) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        num_ex = self.num_examples()
        if self.stop is not None and self.stop > num_ex:
            logger.warning(
                "Stop parameter (%s) exceeds dataset size (%s). Using %s examples instead.",
                self.stop,
                num_ex,
                num_ex,
            )
            self.stop = num_ex
        stop = num_ex if self.stop is None else self.stop
        return max(0, -(-(stop - self.start) // self.step))  # ceil division

    def __getitem__(self, index: int) -> Conversation:
        if not isinstance(index, int | np.integer):
            raise TypeError(f"Index must be an integer, got {type(index)}")
        return self.get_example(self.start + int(index) * self.step)

    # -- what exporting needs beyond nanochat's API --------------------------------------------------
    def reference_answer(self, conversation: Conversation) -> str:
        """The ground truth an RL reward compares against (the verifiers `answer` column)."""
        last = conversation["messages"][-1]
        return content_text(last["content"]) if last["role"] == "assistant" else ""

    def fingerprint(self) -> dict[str, Any]:
        """What this task was read from, so a manifest can tell two exports' inputs apart."""
        return getattr(self, "source", {"task": type(self).__name__})


class DatasetTask(Task):
    """A task over a `datasets.Dataset` in `self.ds` (its rows in the Hub's schema)."""

    def num_examples(self) -> int:
        return len(self.ds)


class TaskMixture(Task):
    """Tasks mixed in a seeded shuffle. Oversample by listing a task twice or with `weights`
    (2.0 = every row twice, 0.5 = an evenly spread half); or give `proportions` and a `stopping` rule
    ('first_exhausted' | 'all_exhausted') as with `datasets.interleave_datasets`."""

    def __init__(
        self,
        tasks: Sequence[Task],
        seed: int = 42,
        weights: Sequence[float] | None = None,
        proportions: Sequence[float] | None = None,
        stopping: str = "first_exhausted",
        shuffle: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.tasks = list(tasks)
        self.lengths = [len(t) for t in self.tasks]
        self.index = mixture_index(self.lengths, seed, weights, proportions, stopping, shuffle)
        self.num_conversations = len(self.index)

    def num_examples(self) -> int:
        return self.num_conversations

    def locate(self, index: int) -> tuple[int, int]:
        """(task index, row of that task) at this position of the mixture."""
        if not 0 <= index < self.num_conversations:
            raise IndexError(f"Index {index} out of range for mixture with {self.num_conversations} rows")
        comp, local, _ = self.index.lookup(np.array([index]))
        return int(comp[0]), int(local[0])

    def get_example(self, index: int) -> Conversation:
        task_idx, local_idx = self.locate(index)
        return self.tasks[task_idx][local_idx]


class TaskSequence(TaskMixture):
    """Tasks one after another, unshuffled: a curriculum."""

    def __init__(self, tasks: Sequence[Task], **kwargs):
        super().__init__(tasks, shuffle=False, **kwargs)


def check_conversation(messages: object, where: str, system_first: bool = False) -> list[dict]:
    """A conversation as nanochat trains on it: (an optional system message if `system_first`, then)
    >= 2 messages alternating user/assistant, each with string content. Errors name `where`."""
    if not isinstance(messages, list):
        raise ValueError(f"{where}: expected a JSON array of messages, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"{where}: message {i} needs 'role' and 'content' fields")
    rest = messages[1:] if system_first and messages and messages[0]["role"] == "system" else messages
    if len(rest) < 2:
        raise ValueError(
            f"{where}: a conversation needs at least 2 messages besides a system one, got {len(rest)}"
        )
    for i, m in enumerate(rest):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"{where}: message {i} has role {m['role']!r} but should be {expected!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"{where}: message {i} content must be a string")
    return messages


def render_mc(question: str, letters: Sequence[str], choices: Sequence[str]) -> str:
    """nanochat's multiple-choice prompt, byte for byte.

    The letter comes *after* its choice (small models bind it better), and `=A` has no space, because
    the assistant answers with the bare token "A", not " A".
    """
    lines = [f"Multiple Choice question: {question}\n"]
    lines += [f"- {choice}={letter}\n" for letter, choice in zip(letters, choices)]
    lines.append("\nRespond only with the letter of the correct answer.")
    return "".join(lines)


def content_text(content: str | list[dict[str, str]]) -> str:
    """A message's content as plain text. Tool parts are written the way GSM8K writes them,
    `<<expr=result>>`, so a GSM8K answer flattens back to its original string."""
    if isinstance(content, str):
        return content
    out = []
    for part in content:
        if part["type"] == "python":
            out.append(f"<<{part['text']}=")
        elif part["type"] == "python_output":
            out.append(f"{part['text']}>>")
        else:
            out.append(part["text"])
    return "".join(out)


# -- loading: the Hub path (dataset id + split) or local files -------------------------------------------


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_rows(
    hub_id: str,
    subset: str | None,
    split: str,
    path: str | Path | None,
    read_local: Callable[[Path], tuple[list[dict], list[Path]]],
    shuffle_seed: int | None = 42,
):
    """Rows in the Hub's schema, as a `datasets.Dataset`, and a description of where they came from.

    Without `path` they come from the Hub (`load_dataset(hub_id, subset, split=split)`). With it,
    `read_local(path)` reads the dataset's original files and normalises them to the Hub's schema, so both
    sources give the same conversations. Like nanochat, rows are shuffled once with seed 42 (so a slice
    such as `stop=1000` is a random sample), unless `shuffle_seed` is None.
    """
    import datasets

    if path is None:
        ds = datasets.load_dataset(hub_id, subset, split=split)
        source = {"hub": hub_id, "subset": subset, "split": split, "fingerprint": ds._fingerprint}
    else:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder (local copy of {hub_id})")
        rows, files = read_local(path)
        if not rows:
            raise ValueError(f"{path}: no rows found for {hub_id} {subset or ''} {split}")
        ds = datasets.Dataset.from_list(rows)
        source = {
            "hub": hub_id,
            "subset": subset,
            "split": split,
            "files": {_rel(f, path): sha256_file(f) for f in sorted(files)},
        }
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed)
    return ds, source


def _rel(file: Path, root: Path) -> str:
    return str(file.relative_to(root)) if root.is_dir() else file.name
