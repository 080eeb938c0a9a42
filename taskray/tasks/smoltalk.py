"""SmolTalk by Hugging Face: general conversations, the "smol" version for small models.
https://huggingface.co/datasets/HuggingFaceTB/smol-smoltalk

Rows have `messages`: an optional system message, then user and assistant alternating. Locally, give
parquet or jsonl files in that schema.
"""

from __future__ import annotations

from pathlib import Path

from taskray.tasks.common import DatasetTask, check_conversation, load_rows


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
        check_conversation(messages, f"SmolTalk row {index}", system_first=True)
        return {"messages": messages}
