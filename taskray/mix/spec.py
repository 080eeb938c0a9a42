"""The YAML mixture spec: which tasks, how many of each, in what order, rendered how.

    name: sft-mix
    seed: 0                       # the shuffle; changing it reorders rows, nothing else
    system_prompt: null           # prepended to every prompt (an entry may override it)
    few_shot: 0                   # solved examples of the same task before the question
    rollouts_per_example: 1       # recorded for the RL trainer (verifiers groups rollouts by example_id)
    shard_size_mb: 64             # target Parquet shard size (or rows_per_shard: N)
    splits:
      train:
        mode: shuffle             # shuffle | sequence
        stopping: first_exhausted # with proportions: first_exhausted | all_exhausted
        tasks:
          - task: arc             # a name from taskray.tasks.TASKS
            name: arc-easy        # the rows' `task` column (default: the task)
            args: {subset: ARC-Easy, split: train}
            repeat: 2             # or weight: 1.5, or proportion: 0.3 (all entries of a split alike)
            slice: {start: 0, stop: 1000, step: 1}
      eval:
        tasks: [...]

Relative `path` / `filepath` arguments are resolved against the spec file's folder.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from taskray.errors import BadInput

PATH_ARGS = ("path", "filepath")
TOP_KEYS = {
    "name",
    "seed",
    "system_prompt",
    "few_shot",
    "rollouts_per_example",
    "shard_size_mb",
    "rows_per_shard",
    "splits",
}
ENTRY_KEYS = {"task", "name", "args", "repeat", "weight", "proportion", "slice", "system_prompt", "few_shot"}
SPLIT_KEYS = {"mode", "stopping", "tasks"}


class SpecError(BadInput):
    """The spec is malformed; the message names the spec and the offending field."""


@dataclass
class Entry:
    task: str
    name: str
    args: dict[str, Any]
    slice: tuple[int, int | None, int] = (0, None, 1)
    repeat: int | None = None
    weight: float | None = None
    proportion: float | None = None
    system_prompt: str | None = None
    few_shot: int = 0


@dataclass
class SplitSpec:
    entries: list[Entry]
    mode: str = "shuffle"
    stopping: str = "first_exhausted"

    @property
    def by_proportion(self) -> bool:
        return any(e.proportion is not None for e in self.entries)


@dataclass
class MixSpec:
    name: str
    seed: int
    splits: dict[str, SplitSpec]
    rollouts_per_example: int = 1
    shard_size_mb: float = 64.0
    rows_per_shard: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # the spec as parsed, paths resolved: for the manifest


def load_spec(path: str | Path, seed: int | None = None) -> MixSpec:
    """Read and check a spec file; `seed` overrides the file's."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    return parse_spec(data, where=str(path), base=path.parent, seed=seed)


def parse_spec(data: Any, where: str = "spec", base: Path | None = None, seed: int | None = None) -> MixSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping at the top level")
    _no_unknown(data, TOP_KEYS, where)
    raw = copy.deepcopy(data)
    if seed is not None:
        raw["seed"] = seed
    seed_value = _int(raw.get("seed", 0), f"{where}: seed")
    system_prompt = raw.get("system_prompt")
    few_shot = _int(raw.get("few_shot", 0), f"{where}: few_shot", minimum=0)
    splits_raw = raw.get("splits")
    if not isinstance(splits_raw, dict) or not splits_raw:
        raise SpecError(f"{where}: 'splits' must map split names (train, eval, ...) to task lists")
    splits = {}
    for split_name, split_raw in splits_raw.items():
        w = f"{where}: splits.{split_name}"
        if not isinstance(split_name, str) or not split_name.replace("_", "").replace("-", "").isalnum():
            raise SpecError(f"{w}: a split name must be letters, digits, '-' or '_'")
        if isinstance(split_raw, list):  # a bare list of tasks
            split_raw = splits_raw[split_name] = {"tasks": split_raw}
        if not isinstance(split_raw, dict):
            raise SpecError(f"{w}: expected a mapping with 'tasks' or a list of tasks")
        _no_unknown(split_raw, SPLIT_KEYS, w)
        mode = split_raw.get("mode", "shuffle")
        if mode not in ("shuffle", "sequence"):
            raise SpecError(f"{w}.mode: must be shuffle or sequence, got {mode!r}")
        stopping = split_raw.get("stopping", "first_exhausted")
        if stopping not in ("first_exhausted", "all_exhausted"):
            raise SpecError(f"{w}.stopping: must be first_exhausted or all_exhausted, got {stopping!r}")
        tasks = split_raw.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise SpecError(f"{w}.tasks: expected a non-empty list of tasks")
        entries = [_entry(e, f"{w}.tasks[{i}]", base, system_prompt, few_shot) for i, e in enumerate(tasks)]
        kinds = {("proportion" if e.proportion is not None else "count") for e in entries}
        if len(kinds) > 1:
            raise SpecError(f"{w}: give every task a proportion, or none (repeat/weight instead)")
        splits[split_name] = SplitSpec(entries, mode, stopping)
    rows_per_shard = raw.get("rows_per_shard")
    if rows_per_shard is not None:
        rows_per_shard = _int(rows_per_shard, f"{where}: rows_per_shard", 1)
    return MixSpec(
        name=str(raw.get("name", "mix")),
        seed=seed_value,
        splits=splits,
        rollouts_per_example=_int(raw.get("rollouts_per_example", 1), f"{where}: rollouts_per_example", 1),
        shard_size_mb=_number(raw.get("shard_size_mb", 64), f"{where}: shard_size_mb"),
        rows_per_shard=rows_per_shard,
        raw=raw,
    )


def _entry(e: Any, w: str, base: Path | None, system_prompt: str | None, few_shot: int) -> Entry:
    from taskray.tasks import TASKS

    if not isinstance(e, dict) or "task" not in e:
        raise SpecError(f"{w}: expected a mapping with a 'task' field")
    _no_unknown(e, ENTRY_KEYS, w)
    if e["task"] not in TASKS:
        raise SpecError(f"{w}.task: unknown task {e['task']!r}; known: {', '.join(sorted(TASKS))}")
    args = e.get("args") or {}
    if not isinstance(args, dict):
        raise SpecError(f"{w}.args: expected a mapping of keyword arguments")
    for key in PATH_ARGS:  # relative to the spec, and absolute in the manifest's copy of the spec
        if isinstance(args.get(key), str) and base is not None and "://" not in args[key]:
            args[key] = str((base / args[key]).resolve())
    given = [k for k in ("repeat", "weight", "proportion") if e.get(k) is not None]
    if len(given) > 1:
        raise SpecError(f"{w}: give one of repeat, weight, proportion; got {', '.join(given)}")
    sl = e.get("slice") or {}
    if isinstance(sl, list):
        sl = dict(zip(("start", "stop", "step"), sl))
    if not isinstance(sl, dict):
        raise SpecError(f"{w}.slice: expected {{start, stop, step}} or [start, stop, step]")
    start = _int(sl.get("start", 0), f"{w}.slice.start", 0)
    stop = None if sl.get("stop") is None else _int(sl["stop"], f"{w}.slice.stop", start)
    step = _int(sl.get("step", 1), f"{w}.slice.step", 1)
    return Entry(
        task=e["task"],
        name=str(e.get("name", e["task"])),
        args=args,
        slice=(start, stop, step),
        repeat=None if e.get("repeat") is None else _int(e["repeat"], f"{w}.repeat", 0),
        weight=None if e.get("weight") is None else _number(e["weight"], f"{w}.weight"),
        proportion=None
        if e.get("proportion") is None
        else _number(e["proportion"], f"{w}.proportion", 1e-12),
        system_prompt=e.get("system_prompt", system_prompt),
        few_shot=_int(e.get("few_shot", few_shot), f"{w}.few_shot", 0),
    )


def _no_unknown(d: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise SpecError(
            f"{where}: unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}"
        )


def _int(v: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{where}: expected an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise SpecError(f"{where}: must be >= {minimum}, got {v}")
    return v


def _number(v: Any, where: str, minimum: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not v >= minimum:
        raise SpecError(f"{where}: expected a number >= {minimum}, got {v!r}")
    return float(v)
