"""A deterministic synthetic TaskTrove corpus: every verifier family, other blob shapes, decoys and attacks.

Same arguments, same bytes: tar/gzip headers carry fixed mtimes and owners, and all choices come from
seeded RNGs (one per source, so large corpora are generated in parallel). The family of each task is in
its `path` (`<family>/<n>`), which detection never reads, so tests can compare what was detected with
what was generated.
"""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import random
import tarfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from taskray.errors import BadInput
from taskray.scan.blob import DEFAULT_LIMITS
from taskray.scan.sources import TASKTROVE_SCHEMA

# Bumped whenever the same arguments start making different bytes, so cached corpora are not reused.
SYNTH_VERSION = 2

# family -> the verifier_kind detection must report (None: not a verifier; "error": an error row)
EXPECTED_KIND: dict[str, str | None] = {
    "harbor_plain": "harbor_tests",
    "pytest": "pytest",
    "pytest_zip": "pytest",
    "pytest_rooted": "pytest",
    "pytest_xz": "pytest",
    "expected_output": "expected_output",
    "code_contests": "io_cases",
    "swe": "swe_patch",
    "swe_lower": "swe_patch",
    "python_verifier": "python_verifier",
    "rubric": "rubric_judge",
    "legacy_tb": "legacy_tb",
    "json_problem": "json_tests",
    "jsonl_problems": "json_tests",
    "traversal": "pytest",  # the attack members are dropped; the rest is a fine task
    "no_verifier": None,
    "decoy": None,
    "test_sh_no_reward": None,
    "text": None,
    "junk": None,
    "truncated": "error",
    "corrupt_gzip": "error",
    "gzip_bomb": "error",
    "zip_bomb": "error",
}
# Relative frequencies. "all": every family about equally, to exercise detection (tests, the sample).
# "tasktrove": shaped like TaskTrove itself, where nearly every blob is a gzip'd Harbor tar and other
# shapes are rare; benchmarks use it (without bombs, which the article's loop cannot survive).
REAL = "real"  # built from real Harbor tasks (synth_real.py), not from the families here
_OTHER_SHAPES = ("pytest_zip", "pytest_xz", "json_problem", "jsonl_problems", "text", "junk")
PROFILES = {
    "all": {f: 10 for f in EXPECTED_KIND}
    | {"gzip_bomb": 1, "zip_bomb": 1, "truncated": 2, "corrupt_gzip": 2},
    "tasktrove": {f: 10 for f in EXPECTED_KIND}
    | dict.fromkeys(_OTHER_SHAPES, 0.5)
    | {"truncated": 0.2, "corrupt_gzip": 0.2, "gzip_bomb": 0, "zip_bomb": 0},
}

TASK_TOML = """version = "1.0"

[metadata]
difficulty = "{difficulty}"
category = "synthetic"
tags = ["synth", "{family}"]

[verifier]
timeout_sec = {verifier_timeout}

[agent]
timeout_sec = {agent_timeout}

[environment]
build_timeout_sec = 600.0
cpus = {cpus}
memory_mb = {memory_mb}
allow_internet = {allow_internet}
docker_image = "example.org/synth/{family}:{n}"
"""
DOCKERFILE = "FROM ubuntu:24.04\nWORKDIR /app\n"
REWARD_TAIL = (
    "if [ $? -eq 0 ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi\n"
)


def task_blob(files: dict[str, str | bytes]) -> bytes:
    """One task as TaskTrove ships it: a gzip'd tar of its files, shell scripts executable."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if name.endswith(".sh") else 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tar(files: dict[str, bytes | str], prefix: str = "./", compress: str = "gz", extra=None) -> bytes:
    buf = io.BytesIO()
    mode = {"gz": "w", "xz": "w:xz"}[compress]
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(prefix + name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra or ():
            tar.addfile(info)
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress == "gz" else raw  # tar czf's level


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), content)
    return buf.getvalue()


_VOCAB = (
    "the a file server log parse regex json output input write read config build test run app data user "
    "process directory script python bash install service port request response error value key list "
    "count line word check ensure return create update delete path version module function class"
).split()


def _prose(rng: random.Random, words: int) -> str:
    """Text that compresses like real instructions (about 3:1), unlike a repeated phrase."""
    out = rng.choices(_VOCAB, k=words)  # one call for all words: generating 300k-task corpora stays quick
    for i in rng.sample(range(words), words * 15 // 100):
        out[i] += f"_{rng.randrange(1000)}"
    for i in range(13, words, 14):
        out[i] += ".\n"
    return " ".join(out)


def _harbor(rng: random.Random, family: str, n: int, tests: dict[str, str], solution: bool = True) -> dict:
    # Sizes like the real Harbor tasks in ../shared/data: a few KB gzip'd, 10-20 KB raw, 6-9 files.
    files = {
        "instruction.md": f"# Task {family} {n}\n\n" + _prose(rng, rng.randint(150, 700)),
        "task.toml": TASK_TOML.format(
            difficulty=rng.choice(["easy", "medium", "hard"]),
            family=family,
            n=n,
            verifier_timeout=float(rng.choice([120, 300, 900])),
            agent_timeout=float(rng.choice([300, 900])),
            cpus=rng.choice([1, 2]),
            memory_mb=rng.choice([2048, 4096]),
            allow_internet=rng.choice(["true", "false"]),
        ),
        "environment/Dockerfile": DOCKERFILE
        + "".join(f"RUN apt-get install -y {rng.choice(_VOCAB)}\n" for _ in range(rng.randint(1, 8))),
        "environment/app/notes.txt": _prose(rng, rng.randint(100, 900)),
        **tests,
    }
    if solution:
        files["solution/solve.sh"] = f"#!/bin/bash\necho 'solution {n}' > /app/out.txt\n# " + _prose(rng, 60)
    return files


def _pytest_tests(n: int) -> dict[str, str]:
    return {
        "tests/test.sh": "#!/bin/bash\nuv run pytest /tests/test_outputs.py -rA\n" + REWARD_TAIL,
        "tests/test_outputs.py": f"def test_out():\n    assert open('/app/out.txt').read() == 'solution {n}\\n'\n",
    }


_bomb_cache: dict[str, bytes] = {}


def _gzip_bomb() -> bytes:
    if "gz" not in _bomb_cache:
        _bomb_cache["gz"] = gzip.compress(b"\0" * (DEFAULT_LIMITS.max_raw_bytes + 1024 * 1024), 9, mtime=0)
    return _bomb_cache["gz"]


def _zip_bomb() -> bytes:
    if "zip" not in _bomb_cache:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for i in range(3):  # a fixed date, like every other member: same arguments, same bytes
                member = zipfile.ZipInfo(f"layer{i}.bin", date_time=(2024, 1, 1, 0, 0, 0))
                zf.writestr(
                    member, b"\0" * (DEFAULT_LIMITS.max_raw_bytes // 2), compress_type=zipfile.ZIP_DEFLATED
                )
        _bomb_cache["zip"] = buf.getvalue()
    return _bomb_cache["zip"]


def make_blob(family: str, n: int, rng: random.Random) -> bytes:
    """One task blob of the given family."""
    builders: dict[str, Callable[[], bytes]] = {
        "harbor_plain": lambda: _tar(
            _harbor(rng, family, n, {"tests/test.sh": "#!/bin/bash\ntest -f /app/out.txt\n" + REWARD_TAIL})
        ),
        "pytest": lambda: _tar(_harbor(rng, family, n, _pytest_tests(n))),
        "pytest_zip": lambda: _zip(_harbor(rng, family, n, _pytest_tests(n))),
        "pytest_rooted": lambda: _tar(_harbor(rng, family, n, _pytest_tests(n)), prefix=f"task-{n}/"),
        "pytest_xz": lambda: _tar(_harbor(rng, family, n, _pytest_tests(n)), compress="xz"),
        "expected_output": lambda: _tar(
            _harbor(
                rng,
                family,
                n,
                {
                    "tests/test.sh": "#!/bin/bash\nbash /app/cmd.sh | diff - /tests/expected_output.txt\n"
                    + REWARD_TAIL,
                    "tests/expected_output.txt": f"line {n}\n",
                },
            )
        ),
        "code_contests": lambda: _tar(
            _harbor(
                rng,
                family,
                n,
                {
                    "tests/test.sh": "#!/bin/bash\npython3 /tests/test_state.py\n" + REWARD_TAIL,
                    "tests/test_state.py": "import json\ncases = json.load(open('/tests/test_data.json'))\n",
                    "tests/test_data.json": json.dumps({"inputs": [str(n)], "outputs": [str(n * 2)]}),
                },
            )
        ),
        "swe": lambda: _tar(
            _harbor(
                rng,
                family,
                n,
                {
                    "tests/test.sh": "#!/bin/bash\ncd /testbed && git apply /tests/test_patch.diff && pytest\n"
                    + REWARD_TAIL,
                    "tests/config.json": json.dumps(
                        {"instance_id": f"repo__{n}", "FAIL_TO_PASS": ["t::a"], "PASS_TO_PASS": ["t::b"]}
                    ),
                    "tests/test_patch.diff": "--- a/t.py\n+++ b/t.py\n@@ -1 +1 @@\n-a\n+b\n",
                },
            )
        ),
        "swe_lower": lambda: _tar(
            _harbor(
                rng,
                family,
                n,
                {
                    "tests/test.sh": "#!/bin/bash\ncd /testbed && pytest\n" + REWARD_TAIL,
                    "tests/config.json": json.dumps({"fail_to_pass": ["t::a"], "pass_to_pass": []}),
                    "tests/trusted_test_paths.txt": "t.py\n",
                },
            )
        ),
        "python_verifier": lambda: _tar(
            _harbor(
                rng,
                family,
                n,
                {
                    "tests/test.sh": "#!/bin/bash\npython3 /tests/verifier.py\n",
                    "tests/verifier.py": "import json\nd = json.load(open('/tests/verifier_data.json'))\n"
                    "open('/logs/verifier/reward.txt', 'w').write('1')\n",
                    "tests/verifier_data.json": json.dumps(
                        {"expected_answer": str(n), "output_regex": r"\d+"}
                    ),
                },
            )
        ),
        "rubric": lambda: _tar(
            _harbor(
                rng,
                family,
                n,
                {
                    "tests/test.sh": "#!/bin/bash\npython3 -m judge /tests/judge.toml > /logs/verifier/reward.json\n",
                    "tests/judge.toml": '[rubric]\ncriteria = ["correct", "concise"]\nmodel = "judge-model"\n',
                },
            )
        ),
        "legacy_tb": lambda: _tar(
            {
                "task.yaml": f"instruction: do thing {n}\nmax_agent_timeout_sec: 360\nmax_test_timeout_sec: 60\n",
                "run-tests.sh": "#!/bin/bash\npytest $TEST_DIR/test_outputs.py\n",
                "solution.sh": "#!/bin/bash\necho ok\n",
                "Dockerfile": DOCKERFILE,
                "tests/test_outputs.py": "def test_ok():\n    assert True\n",
            }
        ),
        "json_problem": lambda: json.dumps(
            {
                "problem": f"Return {n} doubled.",
                "tests": [{"input": str(n), "output": str(2 * n)}],
                "solution": "print(int(input()) * 2)",
            }
        ).encode(),
        "jsonl_problems": lambda: "\n".join(
            json.dumps({"text": f"Write f{i}.", "test_list": [f"assert f{i}() == {i}"]}) for i in range(3)
        ).encode(),
        "traversal": lambda: _tar(
            _harbor(
                rng,
                family,
                n,
                {
                    **_pytest_tests(n),
                    "../../escape.sh": "echo pwned",
                    "/etc/cron.d/evil": "* * * * * root id",
                },
            ),
            extra=[
                _link("tests/link-to-passwd", "/etc/passwd"),
                _link("tests/hard", "../../etc/shadow", hard=True),
                _device("dev/sda"),
            ],
        ),
        "no_verifier": lambda: _tar(_harbor(rng, family, n, {}, solution=rng.random() < 0.5)),
        "decoy": lambda: _tar(
            _harbor(
                rng,
                family,
                n,
                {
                    "evaluation_notes.md": "Notes on how we might eval this later.\n",
                    "README.md": "This task has no verifier yet; a grader and judge will come.\n",
                    "data/retrieval_scores.csv": "a,b\n1,2\n",
                },
            )
        ),
        "test_sh_no_reward": lambda: _tar(
            _harbor(rng, family, n, {"tests/test.sh": "#!/bin/bash\nexit 0\n"})
        ),
        "text": lambda: f"Solve problem {n}: what is {n} + {n}?\n".encode(),
        "junk": lambda: rng.randbytes(rng.randint(16, 512)).replace(b"\x1f\x8b", b"xx").replace(b"PK", b"pk"),
        "truncated": lambda: _tar(_harbor(rng, family, n, _pytest_tests(n)))[: rng.randint(20, 200)],
        "corrupt_gzip": lambda: b"\x1f\x8b\x08\x00" + rng.randbytes(200),
        "gzip_bomb": _gzip_bomb,
        "zip_bomb": _zip_bomb,
    }
    return builders[family]()


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo("./" + name)
    info.type, info.linkname, info.mtime = (
        (tarfile.LNKTYPE if hard else tarfile.SYMTYPE),
        target,
        1_700_000_000,
    )
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo("./" + name)
    info.type, info.devmajor, info.devminor, info.mtime = tarfile.BLKTYPE, 8, 0, 1_700_000_000
    return info


def family_of(path: str) -> str:
    return path.split("/", 1)[0]


def synth_corpus(
    out: str | Path,
    tasks: int,
    sources: int = 4,
    seed: int = 0,
    families: list[str] | None = None,
    row_group_size: int = 2000,
    profile: str = "all",
    parallel_from: int = 20_000,
    tasks_from: str | Path | None = None,
) -> list[Path]:
    """Write `sources` folders `synth__source-<i>/tasks.parquet` holding `tasks` rows in all; from
    `parallel_from` tasks on, one process per source (the bytes are the same either way). The "real"
    profile builds every row from the Harbor task folders in `tasks_from` (synth_real.py)."""
    if (profile == REAL) != (tasks_from is not None):
        raise BadInput("--profile real and --tasks-from DIR go together: real tasks are built from DIR")
    if profile == REAL:
        from taskray.scan.synth_real import load_tasks

        real_tasks = load_tasks(tasks_from)  # read and checked here, before any process starts
        families, weights = [], []
    else:
        real_tasks = None
        families = [f for f in families or EXPECTED_KIND if PROFILES[profile][f] > 0]
        weights = [PROFILES[profile][f] for f in families]
    jobs = [
        (
            Path(out),
            s,
            tasks // sources + (1 if s < tasks % sources else 0),
            seed,
            families,
            weights,
            row_group_size,
            real_tasks,
        )
        for s in range(sources)
    ]
    if tasks < parallel_from:  # small corpora (tests, the built-in sample): no process pool to start
        return [_write_source(*job) for job in jobs]
    # Each source has its own RNG, so sources can be generated in parallel and stay deterministic
    # (about 1 ms of CPU per task).
    with ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_write_source, *zip(*jobs)))


def _write_source(
    out: Path,
    s: int,
    count: int,
    seed: int,
    families: list[str],
    weights: list[float],
    row_group_size: int,
    real_tasks: list | None = None,
) -> Path:
    rng = random.Random(f"{seed}/{s}")
    paths, blobs = [], []
    real = None
    if real_tasks is not None:
        from taskray.scan.synth_real import RealTasks

        real = RealTasks(real_tasks, _prose)
    for i in range(count):
        n = s * 1_000_000 + i
        if real is not None:
            path, blob = real.blob(n, rng)
        else:
            family = rng.choices(families, weights)[0]
            path, blob = f"{family}/{n}", make_blob(family, n, rng)
        paths.append(path)
        blobs.append(blob)
    folder = out / f"synth__source-{s}"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"path": paths, "task_binary": blobs}, schema=TASKTROVE_SCHEMA)
    tmp = folder / ".tasks.parquet.tmp"
    pq.write_table(table, tmp, row_group_size=row_group_size, compression="none")
    tmp.replace(folder / "tasks.parquet")
    return folder / "tasks.parquet"
