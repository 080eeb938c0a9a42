"""The index math of a mixture: which (task, row) sits at each position, without a list of N pairs.

nanochat's TaskMixture builds a Python list of (task_idx, local_idx) tuples and shuffles it: ~100 bytes
per row, so 10^7 rows cost a gigabyte and tens of seconds. Here a mixture is a handful of numbers:

- a *component* is one task taking `count` rows: `count` may exceed the task's length (oversampling: full
  passes over the task, then an evenly spread subset of it) or fall short of it (undersampling);
- components are laid end to end (a TaskSequence), and a TaskMixture visits those concatenated rows in
  the order of a seeded bijection of [0, N) computed per position (a Feistel network with cycle walking).

Everything is vectorised numpy over arrays of positions, so a shard asks for its own range only and any
worker computes exactly the same answer. The seed moves rows around; it never changes which rows exist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_MASK64 = (1 << 64) - 1
_ROUNDS = 4  # Luby-Rackoff: 4 rounds of a good round function make a strong pseudo-random permutation


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fast, well-spread 64-bit hash (uint64 arithmetic wraps, on purpose)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _round_keys(seed: int) -> list[np.uint64]:
    keys = []
    for i in range(_ROUNDS):
        z = np.array([(seed * 0x9E3779B97F4A7C15 + i + 1) & _MASK64], dtype=np.uint64)
        keys.append(_mix64(z)[0])
    return keys


def permute(positions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded bijection of [0, n), evaluated at `positions`: O(len(positions)) work, no table.

    A balanced Feistel network permutes [0, 4^h) for the smallest h with 4^h >= n; values that land in
    [n, 4^h) are encrypted again until they fall inside (cycle walking), which keeps it a bijection of
    [0, n). Since 4^h < 4n, a value needs under 4 rounds of walking on average.
    """
    pos = np.asarray(positions, dtype=np.uint64)
    if n <= 1:
        return pos.astype(np.int64)
    half = max(1, math.ceil((n - 1).bit_length() / 2))
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    keys = _round_keys(seed)

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & mask
        for k in keys:
            left, right = right, left ^ (_mix64(right ^ k) & mask)
        return (left << shift) | right

    out = encrypt(pos)
    outside = np.flatnonzero(out >= np.uint64(n))
    while outside.size:
        out[outside] = encrypt(out[outside])
        outside = outside[out[outside] >= np.uint64(n)]
    return out.astype(np.int64)


@dataclass(frozen=True)
class Component:
    """`count` rows drawn from a task of `length` rows."""

    length: int
    count: int


def counts_for_weights(lengths: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Rows per task when task i is taken weights[i] times over (2 = every row twice, 0.5 = half)."""
    if len(lengths) != len(weights):
        raise ValueError(f"{len(lengths)} tasks but {len(weights)} weights")
    for w in weights:
        if not w >= 0:
            raise ValueError(f"weights must be >= 0, got {w}")
    return [int(round(n * w)) for n, w in zip(lengths, weights)]


def counts_for_proportions(
    lengths: Sequence[int], proportions: Sequence[float], stopping: str = "first_exhausted"
) -> list[int]:
    """Rows per task for a mixture by proportions, with `interleave_datasets`' stopping rules.

    Sampling task i with probability p_i, the stream of `first_exhausted` ends when some task runs out:
    after T = min(n_i / p_i) rows. `all_exhausted` goes on (restarting finished tasks) until every task
    has been seen whole: T = max(n_i / p_i). Task i then contributes round(p_i * T) rows. Counting rows
    instead of sampling a stream makes the proportions exact and the index a closed form.
    """
    if len(lengths) != len(proportions):
        raise ValueError(f"{len(lengths)} tasks but {len(proportions)} proportions")
    if stopping not in ("first_exhausted", "all_exhausted"):
        raise ValueError(f"stopping must be first_exhausted or all_exhausted, got {stopping!r}")
    if any(not p > 0 for p in proportions):
        raise ValueError(f"proportions must be > 0, got {list(proportions)}")
    total = sum(proportions)
    probs = [p / total for p in proportions]
    horizons = [n / p for n, p in zip(lengths, probs)]
    horizon = min(horizons) if stopping == "first_exhausted" else max(horizons)
    counts = [int(round(p * horizon)) for p in probs]
    if stopping == "first_exhausted":  # rounding must never ask a task for more rows than it has
        counts = [min(c, n) for c, n in zip(counts, lengths)]
    else:  # ... nor leave a task unfinished
        counts = [max(c, n) for c, n in zip(counts, lengths)]
    return counts


def mixture_index(
    lengths: Sequence[int],
    seed: int | None = 0,
    weights: Sequence[float] | None = None,
    proportions: Sequence[float] | None = None,
    stopping: str = "first_exhausted",
    shuffle: bool = True,
) -> MixtureIndex:
    """Weights (default 1 each) or proportions -> rows per task -> the index: the one place a mixture
    is counted and laid out, for TaskMixture and the mix export alike."""
    if weights is not None and proportions is not None:
        raise ValueError("give weights or proportions, not both")
    if proportions is not None:
        counts = counts_for_proportions(lengths, proportions, stopping)
    else:
        counts = counts_for_weights(lengths, [1.0] * len(lengths) if weights is None else weights)
    return MixtureIndex([Component(n, c) for n, c in zip(lengths, counts)], seed, shuffle)


class MixtureIndex:
    """Maps positions of a mixture to (component, row in that component's task), vectorised."""

    def __init__(self, components: Sequence[Component], seed: int | None = 0, shuffle: bool = True):
        for c in components:
            if c.count > 0 and c.length <= 0:
                raise ValueError(f"cannot take {c.count} rows from an empty task")
        self.components = list(components)
        self.seed = seed
        self.shuffle = shuffle
        # offsets[i] = first position of component i in the concatenation (K+1 numbers, not N).
        self.offsets = np.concatenate([[0], np.cumsum([c.count for c in components], dtype=np.int64)])
        self.lengths = np.array([max(c.length, 1) for c in components], dtype=np.int64)
        self.counts = np.array([c.count for c in components], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def lookup(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(component index, row inside the component's task, position in the unshuffled concatenation)
        for each position. The last is the same for every seed: a stable id for the row."""
        pos = np.asarray(positions, dtype=np.int64)
        n = len(self)
        if pos.size and (pos.min() < 0 or pos.max() >= n):
            raise IndexError(f"positions out of range for a mixture of {n} rows")
        flat = permute(pos, n, self.seed or 0) if self.shuffle else pos
        comp = np.searchsorted(self.offsets, flat, side="right") - 1
        j = flat - self.offsets[comp]  # j-th row taken from this component
        length, count = self.lengths[comp], self.counts[comp]
        full_passes = count // length
        in_full = j < full_passes * length
        # The last, partial pass takes an evenly spread subset of the task rather than its first rows,
        # and the same subset for every seed.
        rest = count - full_passes * length
        k = j - full_passes * length
        partial = (k * length) // np.maximum(rest, 1)
        local = np.where(in_full, j % length, partial)
        return comp, local, flat
