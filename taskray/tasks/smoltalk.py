"""SmolTalk by Hugging Face: general conversations, the "smol" version for small models.
https://huggingface.co/datasets/HuggingFaceTB/smol-smoltalk

Rows have `messages`: an optional system message, then user and assistant alternating. Locally, give
parquet or jsonl files in that schema.
"""

from __future__ import annotations

from pathlib import Path

from taskray.tasks.common import DatasetTask, load_rows


def check_messages(messages: list, where: str) -> None:
    """Optional system message, then >= 2 messages alternating user/assistant, all with string content."""
    rest = messages[1:] if messages and messages[0].get("role") == "system" else messages
    if len(rest) < 2:
        raise ValueError(f"{where}: needs >= 2 messages besides the system one, got {len(rest)}")
    for i, m in enumerate(rest):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.get("role") != expected:
            raise ValueError(f"{where}: message {i} has role {m.get('role')!r} but should be {expected!r}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: message {i} content must be a string")


class SmolTalk(DatasetTask):
    name = "smoltalk"
    eval_type = "generative"

    def __init__(self, split: str, path: str | None = None, shuffle_seed: int | None = 42, **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise ValueError(f"SmolTalk split must be train|test, got {split!r}")

        def read_local(p: Path) -> tuple[list[dict], list[Path]]:
            import datasets

            files = [p] if p.is_file() else sorted(p.glob("*.parquet")) or sorted(p.glob("*.jsonl"))
            # a folder in the Hub's layout holds train-*.parquet and test-*.parquet: take this split's
            same_split = [f for f in files if f.name.startswith(split)]
            if same_split or any(f.name.startswith(("train", "test")) for f in files):
                files = same_split
            kind = "parquet" if files and files[0].suffix == ".parquet" else "json"
            ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
            return [{"messages": m} for m in ds["messages"]], files

        self.ds, self.source = load_rows(
            "HuggingFaceTB/smol-smoltalk", None, split, path, read_local, shuffle_seed
        )

    def get_example(self, index: int) -> dict:
        messages = self.ds[index]["messages"]
        check_messages(messages, f"SmolTalk row {index}")
        return {"messages": messages}
