"""Decide, from a parsed blob, whether a task carries a verifier, of which kind, and on what evidence.

The rule this replaces (from the article the project starts from) called a task verified when a member
name contained one of ARTICLE_NAME_TOKENS or a JSON blob had a top-level key in ARTICLE_JSON_KEYS. It
misses a plain Harbor task whose only verifier is `tests/test.sh`, and it flags `evaluation_notes.md`.

Here every signal the article used is still recorded (so our signals are a superset of its), and more
are added from the Harbor layout; but `has_verifier` is judged on evidence: a test script that writes
the reward file, a test framework it runs, a family's data file, a non-empty test field. A name alone
counts only for code or config that sits where a verifier would (root or tests/), matched as a word.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import rtoml

from taskray.scan.blob import ParsedBlob, parse_blob

ARTICLE_NAME_TOKENS = ("verifier", "verify", "grader", "judge", "score", "eval")
ARTICLE_JSON_KEYS = (
    "verifier",
    "verifier_config",
    "judge",
    "grader",
    "rubric",
    "test_patch",
    "FAIL_TO_PASS",
    "tests",
)
# Test-carrying fields seen in JSON/JSONL problem rows (MBPP's test_list, APPS' input_output, ...).
JSON_TEST_KEYS = ARTICLE_JSON_KEYS + (
    "test_list",
    "test_cases",
    "input_output",
    "test",
    "fail_to_pass",
    "unit_tests",
    "verification_info",
)
JSON_ORACLE_KEYS = (
    "canonical_solution",
    "solution",
    "solutions",
    "reference_solution",
    "answer",
    "expected_answer",
    "patch",
)

# Most specific family first: a SWE task also has a test.sh that writes the reward, but "swe_patch" is
# what a user filtering for it wants to see.
KINDS = (
    "swe_patch",
    "python_verifier",
    "rubric_judge",
    "io_cases",
    "expected_output",
    "pytest",
    "legacy_tb",
    "harbor_tests",
    "json_tests",
    "none",
)
_KIND_RANK = {kind: rank for rank, kind in enumerate(KINDS)}
HARBOR_REQUIRED = frozenset(("instruction.md", "task.toml", "environment/Dockerfile", "tests/test.sh"))

# Both say: the literal, where it stands as a word of its own (or, for the reward file, under Harbor's
# /logs/verifier/). Written literal first, boundaries after: a pattern that starts with \b makes the
# regex engine try every position of the script; one that starts with a literal jumps between its
# occurrences. (Same matches as `\bpytest\b` and `/logs/verifier/reward\.(txt|json)|\breward\.(txt|json)\b`.)
_REWARD = re.compile(
    r"reward\.(?:txt|json)(?:(?<=/logs/verifier/reward\.txt)|(?<=/logs/verifier/reward\.json)"
    r"|(?<!\wreward\.txt)(?<!\wreward\.json)(?!\w))"
)
_PYTEST = re.compile(r"pytest(?<!\wpytest)(?!\w)")
_NAME_WORD = re.compile(
    r"(?:^|[^a-z])(verifier|verify|grader|grade|judge|scorer|score|evaluate|eval)(?:[^a-z]|$)"
)
_PY_TEST_NAME = re.compile(r"(^|/)(test_[^/]*|[^/]*_test)\.py$")
_RUBRIC_TABLE = re.compile(r"^\s*\[?(rubric|judge|criteria)", re.M)
_CODE_OR_CONFIG = (".py", ".sh", ".js", ".ts", ".rb", ".json", ".toml", ".yaml", ".yml")


@dataclass(slots=True)
class Detection:
    has_verifier: bool = False
    verifier_kind: str = "none"
    verifier_signals: list[str] = field(default_factory=list)
    has_oracle: bool = False
    harbor_complete: bool = False
    article_verified: bool = False  # the article's rule, kept for comparison and benchmarks
    verifier_timeout_sec: float | None = None
    agent_timeout_sec: float | None = None
    cpus: float | None = None
    memory_mb: int | None = None
    allow_internet: bool | None = None
    docker_image: str | None = None

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


_LEGACY_TIMEOUT = re.compile(
    r"""^["']?(max_test_timeout_sec|max_agent_timeout_sec)["']?[ \t]*:[ \t]*["']?([^\s"'#]+)""", re.M
)
_ARTICLE_NAME = re.compile("|".join(ARTICLE_NAME_TOKENS))


def article_name_hits(names: Iterable[str]) -> list[str]:
    return [n for n in names if _ARTICLE_NAME.search(n.lower())]


def _nonempty(value: Any) -> bool:
    return value not in (None, "", [], {}, "[]", "{}")


def _table(cfg: dict, name: str) -> dict:
    value = cfg.get(name)
    return value if isinstance(value, dict) else {}


_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?")  # "2G", "512 MB", "1.5GiB"


def _memory_mb(env: dict) -> int | None:
    if "memory_mb" in env:
        mb = _float(env["memory_mb"])
    elif "memory" not in env:
        return None
    else:
        m = _MEMORY.fullmatch(str(env["memory"]).strip().upper())
        mb = (
            float(m.group(1)) * {"": 1 / 2**20, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[m.group(2)]
            if m
            else None
        )
    return int(mb) if mb is not None and 0 <= mb < 2**53 else None  # the catalog column is int64


TaskConfig = tuple[float | None, float | None, float | None, int | None, bool | None, str | None]


@functools.lru_cache(maxsize=1024)
def _task_config(raw: bytes) -> TaskConfig | None:
    """(verifier timeout, agent timeout, cpus, memory MB, allow_internet, docker_image) from task.toml's
    bytes; None when it does not parse. Remembered by content: a source's tasks often share one task.toml
    (an adapter writes them from a template), and parsing it costs about a tenth of a task's CPU even with
    rtoml (Rust; 9x faster than tomllib). A task.toml seen only once costs a dictionary lookup more."""
    try:
        cfg = rtoml.loads(raw.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    # Task files are untrusted input: a field of the wrong type is left empty, never a crash.
    env = _table(cfg, "environment")
    allow_internet, docker_image = env.get("allow_internet"), env.get("docker_image")
    return (
        _float(_table(cfg, "verifier").get("timeout_sec")),
        _float(_table(cfg, "agent").get("timeout_sec")),
        _float(env.get("cpus")),
        _memory_mb(env),
        allow_internet if isinstance(allow_internet, bool) else None,
        docker_image if isinstance(docker_image, str) else None,
    )


def _read_task_config(parsed: ParsedBlob, det: Detection) -> None:
    raw = parsed.files.get("task.toml")
    if raw is not None:
        config = _task_config(raw)
        if config is None:
            det.verifier_signals.append("task.toml:unparseable")
            return
        (
            det.verifier_timeout_sec,
            det.agent_timeout_sec,
            det.cpus,
            det.memory_mb,
            det.allow_internet,
            det.docker_image,
        ) = config
        return
    yaml_text = parsed.text("task.yaml")
    if yaml_text is not None:  # older Terminal-Bench layout
        # Two top-level scalars are all we read, and in Terminal-Bench's task.yaml a top-level key is a
        # line starting at column 0: the instruction around them is a block scalar (`|-`), whose lines
        # are indented. (A multi-line *quoted* scalar could put a look-alike line at column 0; the
        # timeouts are hints, not evidence, so we accept that.) A YAML parser spent most of its time on
        # the instruction text, a visible share of a scan's CPU on a corpus with a few legacy tasks.
        found = dict(_LEGACY_TIMEOUT.findall(yaml_text.removeprefix("\ufeff")))
        det.verifier_timeout_sec = _float(found.get("max_test_timeout_sec"))
        det.agent_timeout_sec = _float(found.get("max_agent_timeout_sec"))


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _json_keys(obj: Any, signals: list[str], where: str) -> set[str]:
    """Record article keys and test-carrying keys present with a non-empty value."""
    found = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ARTICLE_JSON_KEYS:
                signals.append(f"{where}:key-{key}")
            if key in JSON_TEST_KEYS or key.lower() in ("fail_to_pass", "pass_to_pass"):
                if _nonempty(value):
                    found.add(key.lower())
    return found


@functools.lru_cache(maxsize=1024)
def _test_script(raw: bytes) -> tuple[bool, bool, bool]:
    """Whether tests/test.sh writes the reward file, runs pytest, names expected_output. Remembered by
    content, like task.toml: a source's tasks often share one test script."""
    text = raw.decode("utf-8", errors="replace")
    # Real test scripts run to kilobytes: a plain substring test (fast) comes before each regex, which
    # then only confirms the word boundaries where the substring is there at all.
    return (
        "reward." in text and _REWARD.search(text) is not None,
        "pytest" in text and _PYTEST.search(text) is not None,
        "expected_output" in text,
    )


def _detect_archive(parsed: ParsedBlob, det: Detection) -> None:
    names = parsed.members
    sig = det.verifier_signals
    kinds: set[str] = set()

    test_sh = parsed.files.get("tests/test.sh")
    writes_reward, runs_pytest, names_expected_output = _test_script(test_sh or b"")
    if test_sh is not None:
        sig.append("tests/test.sh:present")
        if writes_reward:
            sig.append("tests/test.sh:writes-reward")
            kinds.add("harbor_tests")
        else:
            sig.append("tests/test.sh:no-reward")
        if runs_pytest:
            sig.append("tests/test.sh:runs-pytest")

    # Most tasks have no article-name hit at all, so one look over all names spares a search per name.
    all_names = "\n".join(names).lower()
    name_hits = article_name_hits(names) if any(t in all_names for t in ARTICLE_NAME_TOKENS) else []
    # One loop over the member names collects what the rules below look at.
    py_tests, expected, tomls, json_members = [], [], [], []
    has_tests_dir = has_solution = False
    for n, size in names.items():
        if n.startswith("tests/"):
            has_tests_dir = True
            if n.endswith(".py") and _PY_TEST_NAME.search(n):
                py_tests.append(n)
            elif n.startswith("tests/expected_output"):
                expected.append(n)
            elif n.endswith(".toml") and n.count("/") == 1:
                tomls.append(n)
        elif n.startswith("solution") and size > 0 and (n.startswith("solution/") or n == "solution.sh"):
            has_solution = True
        elif n.endswith(".toml") and "/" not in n and n != "task.toml":
            tomls.append(n)
        if n.endswith(".json") and n in parsed.files and n != "tests/config.json":
            json_members.append(n)

    if py_tests and (runs_pytest or "harbor_tests" in kinds):
        sig.extend(f"{n}:pytest" for n in py_tests)
        kinds.add("pytest")

    if expected and (names_expected_output or "harbor_tests" in kinds):
        sig.extend(f"{n}:expected-output" for n in expected)
        kinds.add("expected_output")

    if "tests/test_data.json" in names:
        sig.append("tests/test_data.json:io-cases")
        kinds.add("io_cases")

    config = parsed.text("tests/config.json")
    article_json = False
    if config is not None:
        try:
            obj = json.loads(config)
            article_json = isinstance(obj, dict) and any(k in obj for k in ARTICLE_JSON_KEYS)
            keys = _json_keys(obj, sig, "tests/config.json")
        except (ValueError, RecursionError):  # RecursionError: nested thousands deep
            keys = set()
            sig.append("tests/config.json:unparseable")
        for k in ("fail_to_pass", "pass_to_pass"):
            if k in keys:
                sig.append(f"tests/config.json:{k.upper()}")
                kinds.add("swe_patch")
    for n in ("tests/test_patch.diff", "tests/trusted_test_paths.txt"):
        if n in names:
            sig.append(f"{n}:swe")
            if "harbor_tests" in kinds or config is not None:
                kinds.add("swe_patch")

    if "tests/verifier.py" in names:
        sig.append("tests/verifier.py:python-verifier")
        kinds.add("python_verifier")
        if "tests/verifier_data.json" in names:
            sig.append("tests/verifier_data.json:verifier-data")

    for n in tomls:
        base = n.rsplit("/", 1)[-1]
        if "judge" in base or "rubric" in base or _RUBRIC_TABLE.search(parsed.text(n) or ""):
            sig.append(f"{n}:rubric")
            kinds.add("rubric_judge")

    if "task.yaml" in names and ("run-tests.sh" in names or has_tests_dir):
        sig.append("task.yaml:legacy-tb")
        if "run-tests.sh" in names:
            sig.append("run-tests.sh:legacy-tb")
            kinds.add("legacy_tb")

    # The article's name rule, kept as signals; a name is evidence only for code or config in a verifier's
    # place, matched as a word ("retrieval.py" and "evaluation_notes.md" are not verifiers).
    for n in name_hits:
        base = n.rsplit("/", 1)[-1].lower()
        sig.append(f"{n}:name")
        in_place = n.count("/") == 0 or n.startswith("tests/")
        is_code = base.endswith(_CODE_OR_CONFIG) or "." not in base
        if in_place and is_code and _NAME_WORD.search(base.rsplit(".", 1)[0]) and parsed.members[n] > 0:
            sig.append(f"{n}:verifier-name")
            kinds.add("python_verifier" if base.endswith(".py") else "harbor_tests")

    for n in json_members:
        try:
            obj = json.loads(parsed.files[n])
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict) and any(k in obj for k in ARTICLE_JSON_KEYS):
            article_json = True
            _json_keys(obj, sig, n)

    det.harbor_complete = names.keys() >= HARBOR_REQUIRED
    det.has_oracle = has_solution
    det.verifier_kind = min(kinds, key=_KIND_RANK.__getitem__) if kinds else "none"
    det.article_verified = bool(name_hits) or article_json
    _read_task_config(parsed, det)


def _detect_json(parsed: ParsedBlob, det: Detection) -> None:
    rows = parsed.data if parsed.format == "jsonl" else [parsed.data]
    keys: set[str] = set()
    for i, row in enumerate(rows):
        # the article's keys are recorded once (first row); test fields are looked for in every row
        keys |= _json_keys(row, det.verifier_signals if i == 0 else [], "json")
    det.verifier_signals.extend(f"json:{k}" for k in sorted(keys))
    det.article_verified = (
        parsed.format == "json"
        and isinstance(parsed.data, dict)
        and any(k in parsed.data for k in ARTICLE_JSON_KEYS)
    )
    if keys:
        det.verifier_kind = "json_tests"
    det.has_oracle = any(
        isinstance(r, dict) and any(_nonempty(r.get(k)) for k in JSON_ORACLE_KEYS) for r in rows
    )


def detect(parsed: ParsedBlob) -> Detection:
    """Verifier evidence for one parsed blob. Pure: the same blob always gives the same answer."""
    det = Detection()
    if parsed.error:
        return det
    if parsed.format in ("tar", "zip"):
        _detect_archive(parsed, det)
    elif parsed.format in ("json", "jsonl"):
        _detect_json(parsed, det)
    det.has_verifier = det.verifier_kind != "none"
    return det


def parse_and_detect(blob: bytes) -> tuple[ParsedBlob, Detection]:
    """`parse_blob` then `detect`, neither of which ever raises on bad input."""
    parsed = parse_blob(blob)
    try:
        return parsed, detect(parsed)
    except Exception as e:  # a detection bug must cost one row, not a piece (parse_blob does the same)
        parsed.error = f"unexpected {type(e).__name__} in detection: {e}"
        return parsed, Detection()
