"""Reading a trial's reward as Harbor does, and the verdict of a task from its two trials. Pure.

Harbor's rule: `/logs/verifier/reward.json`, if present, is an object of named numeric rewards (other
fields are ignored; a scalar `reward.txt` beside it fills in `reward` when the JSON has none); otherwise
`reward.txt` is one float. A missing, empty or unparsable reward file is an error, and test.sh's exit
code means nothing.

A task's score is its `reward`, or, when a reward.json names only other rewards, their mean.

A legacy Terminal-Bench task writes no reward file: its run-tests.sh runs pytest with `-rA`, and the
task is solved when every test in pytest's short summary passed (Terminal-Bench's own rule).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

VERDICTS = (
    "verified",  # the oracle earned the full reward and the untouched environment earned nothing
    "oracle_failed",  # the oracle solution did not earn the full reward
    "accepts_anything",  # the untouched environment was rewarded: the verifier is broken
    "no_reward",  # test.sh wrote no (readable) reward
    "no_oracle",  # no solution/: only the null trial ran
    "timeout",  # solve.sh or test.sh ran past its task.toml timeout
    "build_failed",  # the environment image did not build
    "unsupported",  # the task needs what this machine cannot give (KVM, a GPU, ...); the row says which
    "infra_error",  # Docker or a node failed, after retries: not a verdict on the task
)


@dataclass
class Rewards:
    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # why there is no reward

    @property
    def score(self) -> float | None:
        if self.error or not self.values:
            return None
        if "reward" in self.values:
            return self.values["reward"]
        return sum(self.values.values()) / len(self.values)


def _text_reward(raw: bytes) -> Rewards:
    if not raw.strip():
        return Rewards(error="reward.txt is empty")
    try:
        value = float(raw.decode("utf-8", errors="replace").strip())
    except ValueError:
        return Rewards(error=f"reward.txt is not a number: {raw[:60]!r}")
    if not math.isfinite(value):
        return Rewards(error=f"reward.txt is not a finite number: {value}")
    return Rewards({"reward": value})


def parse_rewards(reward_json: bytes | None, reward_txt: bytes | None) -> Rewards:
    """The rewards of one trial from the two files' bytes (None: the file does not exist)."""
    if reward_json is not None:
        if not reward_json.strip():
            return Rewards(error="reward.json is empty")
        try:
            parsed = json.loads(reward_json)
        except (ValueError, RecursionError):
            return Rewards(error="reward.json is not valid JSON")
        if not isinstance(parsed, dict):
            return Rewards(error="reward.json is not an object")
        values = {
            k: float(v)
            for k, v in parsed.items()
            if isinstance(k, str)
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
        }
        if "reward" not in values and reward_txt is not None:
            scalar = _text_reward(reward_txt)
            values.update(scalar.values)
        if not values:
            return Rewards(error="reward.json holds no numeric reward")
        return Rewards(values)
    if reward_txt is not None:
        return _text_reward(reward_txt)
    return Rewards(error="test.sh wrote no /logs/verifier/reward.txt or reward.json")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY_HEADER = re.compile(r"^=+ short test summary info =+$", re.MULTILINE)
_OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_pytest_summary(output: str) -> Rewards:
    """A legacy task's reward from its run-tests.sh output: 1 when every test pytest's `-rA` summary
    lists PASSED, 0 when any did not, no reward when there is no summary to read."""
    text = _ANSI.sub("", output)
    headers = list(_SUMMARY_HEADER.finditer(text))
    if not headers:
        return Rewards(error="run-tests.sh printed no pytest short test summary (pytest -rA)")
    outcomes = []
    for line in text[headers[-1].end() :].splitlines():
        if line.startswith("="):
            break
        m = _OUTCOME.match(line)
        if m:
            outcomes.append(m.group(1))
    if not outcomes:
        return Rewards(error="pytest's short test summary lists no test")
    return Rewards({"reward": float(all(o == "PASSED" for o in outcomes))})


# How a failed download reads in curl, git, wget, pip, uv and Python's own libraries.
_UNREACHABLE = re.compile(
    r"Could not resolve host:? '?([\w.-]+)|unable to access '(?:https?://)?([\w.-]+)|"
    r"Failed to establish a new connection.*?host='?([\w.-]+)|unable to resolve host address '?([\w.-]+)|"
    r"Temporary failure in name resolution.*?([\w-]+\.[\w.-]+)|Name or service not known.*?([\w-]+\.[\w.-]+)"
)


def unreachable_host(log: str) -> str | None:
    """The first internet host a script failed to reach, going by its output; None if none did."""
    m = _UNREACHABLE.search(log or "")
    return next((g for g in m.groups() if g), None) if m else None


@dataclass
class Trial:
    """What one run of test.sh (after solve.sh, or on the untouched environment) came to."""

    rewards: Rewards
    timed_out: str | None = None  # "solve.sh" or "test.sh" when it ran past its timeout
    infra_error: str | None = None


def verdict(oracle: Trial | None, null: Trial | None) -> tuple[str, str]:
    """(verdict, why) from the oracle and null trials; either may be None (not run)."""
    for name, trial in (("oracle", oracle), ("null", null)):
        if trial is not None and trial.infra_error:
            return "infra_error", f"{name} trial: {trial.infra_error}"
    for name, trial in (("oracle", oracle), ("null", null)):
        if trial is not None and trial.timed_out:
            return "timeout", f"{name} trial: {trial.timed_out} ran past its timeout"
    if null is not None and (null.rewards.score or 0) > 0:
        return "accepts_anything", f"the untouched environment earned {null.rewards.score:g}"
    if oracle is None:
        if null is not None and null.rewards.error:
            return "no_reward", f"null trial: {null.rewards.error}"
        return "no_oracle", "no solution/ to run; the untouched environment earned 0"
    if oracle.rewards.error:
        return "no_reward", f"oracle trial: {oracle.rewards.error}"
    if oracle.rewards.score < 1.0:
        return "oracle_failed", f"the oracle earned {oracle.rewards.score:g}, not 1"
    if null is None:
        return "verified", "the oracle earned 1 (no null trial was run)"
    if null.rewards.error:
        # no reward file from an untouched environment is a zero to Harbor's users, but the verifier
        # never wrote one: that is the 'never writes a reward on failure' bug, not a working verifier
        return "no_reward", f"null trial: {null.rewards.error}"
    return "verified", "the oracle earned 1 and the untouched environment 0"
