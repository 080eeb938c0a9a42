"""The verify job on real Docker and a real Ray: synthetic Harbor tasks that cover every verdict.

Tasks build `FROM debian:bookworm`, which the base map points at the local image the sandbox build made
(no registry here), so the map is exercised too.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taskray.scan import scan
from taskray.scan.synth import task_blob
from taskray.verify.rewards import Rewards, Trial, parse_pytest_summary, parse_rewards, verdict
from taskray.verify.task import base_images, load_task, rewrite_from

TOML = 'version = "1.0"\n[verifier]\ntimeout_sec = {verifier}\n[agent]\ntimeout_sec = {agent}\n'
WRITE = (
    'mkdir -p /logs/verifier\nif [ "$(cat /app/answer.txt 2>/dev/null)" = 42 ]; then {ok}; else {bad}; fi\n'
)
SOLVE = "#!/bin/bash\nmkdir -p /app && echo 42 > /app/answer.txt\n"


def harbor_tar(
    test_sh: str,
    solve_sh: str | None = SOLVE,
    dockerfile: str = "FROM debian:bookworm\nWORKDIR /app\n",
    verifier: float = 60,
    agent: float = 60,
) -> bytes:
    files = {
        "task.toml": TOML.format(verifier=verifier, agent=agent),
        "instruction.md": "Write 42 to /app/answer.txt.\n",
        "environment/Dockerfile": dockerfile,
        "tests/test.sh": "#!/bin/bash\n" + test_sh,
    }
    if solve_sh is not None:
        files["solution/solve.sh"] = solve_sh
    return task_blob(files)


PYTEST_42 = (
    "from pathlib import Path\n\n\ndef test_answer():\n"
    '    assert Path("/app/answer.txt").read_text().strip() == "42"\n'
)
RUN_TESTS = '#!/bin/bash\ncd "$TEST_DIR" && python3 -m pytest test_outputs.py {flags}\n'


def legacy_tar(
    test_py: str = PYTEST_42, run_tests: str | None = RUN_TESTS.format(flags="-rA"), **extra: str
) -> bytes:
    """A Terminal-Bench task as it shipped before Harbor: task.yaml, a top-level Dockerfile,
    solution.sh, run-tests.sh and tests/test_outputs.py, judged by pytest's summary."""
    files = {
        "task.yaml": "instruction: |-\n  Write 42 to /app/answer.txt.\nmax_test_timeout_sec: 60\n",
        "Dockerfile": "FROM debian:bookworm\nWORKDIR /app\n",
        "solution.sh": SOLVE,
        "tests/test_outputs.py": test_py,
        **extra,
    }
    if run_tests is not None:
        files["run-tests.sh"] = run_tests
    return task_blob({k: v for k, v in files.items() if v is not None})


TASKS = {
    "works": harbor_tar(
        WRITE.format(ok="echo 1 > /logs/verifier/reward.txt", bad="echo 0 > /logs/verifier/reward.txt")
    ),
    "accepts-anything": harbor_tar("mkdir -p /logs/verifier; echo 1 > /logs/verifier/reward.txt\n"),
    "never-writes": harbor_tar("echo 'all good'\n"),
    "silent-on-failure": harbor_tar(WRITE.format(ok="echo 1 > /logs/verifier/reward.txt", bad="true")),
    "json-rewards": harbor_tar(
        WRITE.format(
            ok='echo \'{"reward": 1.0, "style": 0.5, "note": "x"}\' > /logs/verifier/reward.json',
            bad='echo \'{"reward": 0, "style": 0}\' > /logs/verifier/reward.json',
        )
    ),
    "solve-hangs": harbor_tar(
        WRITE.format(ok="echo 1 > /logs/verifier/reward.txt", bad="echo 0 > /logs/verifier/reward.txt"),
        solve_sh="#!/bin/bash\nsleep 600\n",
        agent=3,
    ),
    "does-not-build": harbor_tar("true\n", dockerfile="FROM debian:bookworm\nRUN exit 3\n"),
    "floods": harbor_tar(
        WRITE.format(ok="echo 1 > /logs/verifier/reward.txt", bad="echo 0 > /logs/verifier/reward.txt"),
        solve_sh=SOLVE + "head -c 300000000 /dev/zero | tr '\\0' x\n",
    ),
    "escapes": harbor_tar(
        WRITE.format(ok="echo 1 > /logs/verifier/reward.txt", bad="echo 0 > /logs/verifier/reward.txt"),
        solve_sh=SOLVE + "echo pwned > /host-escape-marker 2>/dev/null\n"
        "f() { f | f & }; f 2>/dev/null &\nsleep 5\n",
        agent=20,
    ),
    "no-oracle": harbor_tar(
        WRITE.format(ok="echo 1 > /logs/verifier/reward.txt", bad="echo 0 > /logs/verifier/reward.txt"),
        solve_sh=None,
    ),
}
EXPECTED = {
    "works": "verified",
    "accepts-anything": "accepts_anything",
    "never-writes": "no_reward",
    "silent-on-failure": "no_reward",
    "json-rewards": "verified",
    "solve-hangs": "timeout",
    "does-not-build": "build_failed",
    "floods": "verified",
    "no-oracle": "no_oracle",
}


# -- pure logic -----------------------------------------------------------------------------------------
def test_rewards_are_read_as_harbor_reads_them():
    assert parse_rewards(None, b"1\n").values == {"reward": 1.0}
    assert parse_rewards(b'{"reward": 0.5, "a": 1, "flag": true, "s": "x"}', b"1").values == {
        "reward": 0.5,
        "a": 1.0,
    }
    assert parse_rewards(b'{"a": 1, "b": 0}', b"0.25").values == {"a": 1.0, "b": 0.0, "reward": 0.25}
    assert parse_rewards(b'{"a": 1, "b": 0}', None).score == 0.5
    for json_bytes, txt, error in (
        (None, None, "wrote no"),
        (None, b"", "empty"),
        (None, b"yes", "not a number"),
        (b"", None, "empty"),
        (b"[1]", None, "not an object"),
        (b"{", None, "valid JSON"),
    ):
        assert error in parse_rewards(json_bytes, txt).error


def test_verdicts():
    one, zero, none = (
        Trial(Rewards({"reward": 1.0})),
        Trial(Rewards({"reward": 0.0})),
        Trial(Rewards(error="x")),
    )
    assert verdict(one, zero)[0] == "verified"
    assert verdict(one, one)[0] == "accepts_anything"
    assert verdict(zero, zero)[0] == "oracle_failed"
    assert verdict(none, zero)[0] == "no_reward" and verdict(one, none)[0] == "no_reward"
    assert verdict(None, zero)[0] == "no_oracle"
    assert verdict(Trial(Rewards(), timed_out="solve.sh"), zero)[0] == "timeout"
    assert verdict(Trial(Rewards(), infra_error="daemon gone"), zero)[0] == "infra_error"


def test_legacy_tasks_are_judged_by_pytest_s_summary(tmp_path):
    """The summary of real pytest runs: solved only when every listed test passed."""
    import subprocess
    import sys

    (tmp_path / "test_mixed.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    assert 0\n")
    (tmp_path / "test_good.py").write_text("def test_a():\n    pass\n")

    def pytest_output(name: str, *flags: str) -> str:
        run = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", name, *flags]
        return subprocess.run(run, cwd=tmp_path, capture_output=True, text=True).stdout

    assert parse_pytest_summary(pytest_output("test_good.py", "-rA")).score == 1.0
    assert parse_pytest_summary(pytest_output("test_mixed.py", "-rA")).score == 0.0
    assert "no pytest short test summary" in parse_pytest_summary(pytest_output("test_good.py")).error
    assert parse_pytest_summary("bash: pytest: command not found\n").error
    legacy = load_task(legacy_tar())
    assert legacy.legacy and legacy.test_command == ["bash", "/tests/run-tests.sh"]
    assert set(legacy.tests) == {"test_outputs.py", "run-tests.sh"} and legacy.verifier_timeout == 60
    keystrokes = legacy_tar(**{"solution.sh": None, "solution.yaml": "- command: echo 42"})
    assert "solution.yaml" in load_task(keystrokes).unsupported


def test_environments_go_to_nodes_that_hold_their_images():
    from taskray.verify.images import place

    holdings = {"a": {"img-1", "img-2"}, "b": {"img-2"}, "c": set()}
    images = {"e1": "img-1", "e2": "img-2", "e3": "img-2", "e4": "img-3", "e5": None}
    # img-1 only on a; img-2 on a and b, spread by load; nobody holds img-3: built wherever it lands
    assert place(images, holdings) == {"e1": "a", "e2": "b", "e3": "a"}
    assert place(images, {}) == {}


def test_unreachable_hosts_are_read_from_a_script_s_output():
    from taskray.verify.rewards import unreachable_host

    git = "fatal: unable to access 'https://github.com/x/y.git/': Could not resolve host: github.com"
    assert unreachable_host(git) == "github.com"
    assert unreachable_host("curl: (6) Could not resolve host: astral.sh") == "astral.sh"
    assert unreachable_host("AssertionError: expected 42, got 41") is None


def test_tasks_load_and_from_lines_rewrite():
    task = load_task(TASKS["works"])
    assert "tests/test.sh" in task.executable and task.solution and task.verifier_timeout == 60
    assert load_task(TASKS["works"]).environment_hash == load_task(TASKS["accepts-anything"]).environment_hash
    assert load_task(TASKS["does-not-build"]).environment_hash != task.environment_hash
    text = "FROM --platform=linux/amd64 ubuntu:24.04 AS base\nRUN x\nFROM base\nFROM python:3.11-slim\n"
    assert base_images(text) == ["ubuntu:24.04", "python:3.11-slim"]
    out, done = rewrite_from(text, {"ubuntu:24.04": "local-ubuntu"})
    assert (
        "FROM --platform=linux/amd64 local-ubuntu AS base" not in out and "FROM local-ubuntu AS base" in out
    )
    assert done == {"ubuntu:24.04": "local-ubuntu"} and "FROM base" in out


# -- on Docker and Ray ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_image() -> str:
    from taskray.sandbox.daemon import docker_client
    from taskray.sandbox.image import OFFLINE_BASE, REGISTRY_BASE, _have

    client = docker_client()
    for image in (OFFLINE_BASE, REGISTRY_BASE):
        if _have(client, image):
            return image
    pytest.fail("no local Debian base image: run `taskray sandbox build` first")


def corpus(folder: Path, tasks: dict[str, bytes]) -> Path:
    src = folder / "org__verify"
    src.mkdir(parents=True)
    pq.write_table(
        pa.table({"path": list(tasks), "task_binary": list(tasks.values())}), src / "tasks.parquet"
    )
    return folder


@pytest.mark.timeout(900)
def test_every_verdict_on_real_docker(ray_local, base_image, tmp_path):
    from taskray.verify.job import verify

    src = corpus(tmp_path / "src", TASKS)
    scanned = str(tmp_path / "scan")
    scan(str(src), scanned)
    out = tmp_path / "verified"
    summary = verify(scanned, str(out), where=[], base_map={"debian:bookworm": base_image})
    rows = {r["path"]: r for r in pq.read_table(out / "catalog" / "verify.parquet").to_pylist()}
    verdicts = {p: r["verdict"] for p, r in rows.items()}
    # a fork bomb takes its own container down (its pids limit), never the host or the run: a task verdict
    assert verdicts.pop("escapes") in ("no_reward", "oracle_failed", "timeout"), rows["escapes"]
    assert verdicts == EXPECTED, {p: r["verdict_detail"] for p, r in rows.items()}
    assert rows["works"]["oracle_reward"] == 1.0 and rows["works"]["null_reward"] == 0.0
    assert json.loads(rows["works"]["base_rewrites"]) == {"debian:bookworm": base_image}
    assert summary["verdicts"]["verified"] == 3 and summary["tasks"] == len(TASKS)
    assert not Path("/host-escape-marker").exists()
    results = {
        r["key"].split("#")[0]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())
    }
    assert len(results) == 1  # one shard
    # the verified subset is exported like any catalog selection
    from taskray.scan.export import export

    manifest = export(str(out), str(tmp_path / "exported"), ["verdict=verified"])
    assert len(manifest["written"]) == 3
    # nothing is left running or lying around
    from taskray.sandbox.daemon import LABEL, docker_client

    assert (
        docker_client().api.containers(all=True, filters={"label": f"{LABEL}=1", "status": "running"}) == []
    )


LEGACY_TASKS = {
    "tb-works": legacy_tar(),
    "tb-default-runner": legacy_tar(run_tests=None),
    "tb-accepts-anything": legacy_tar("def test_anything():\n    assert True\n"),
    "tb-half-solved": legacy_tar(PYTEST_42 + "\n\ndef test_more():\n    assert False\n"),
    "tb-no-summary": legacy_tar(run_tests=RUN_TESTS.format(flags="-q")),
}
LEGACY_EXPECTED = {
    "tb-works": "verified",
    "tb-default-runner": "verified",
    "tb-accepts-anything": "accepts_anything",
    "tb-half-solved": "oracle_failed",
    "tb-no-summary": "no_reward",
}


@pytest.mark.timeout(1200)
def test_legacy_terminal_bench_tasks_on_real_docker(ray_local, tmp_path):
    """Run as Terminal-Bench ran them, with pytest from the offline base (as a registry image would)."""
    from taskray.verify.job import verify

    src = corpus(tmp_path / "src", LEGACY_TASKS)
    scanned = str(tmp_path / "scan")
    scan(str(src), scanned)
    out = tmp_path / "verified"
    verify(scanned, str(out), where=[], offline=True)
    rows = {r["path"]: r for r in pq.read_table(out / "catalog" / "verify.parquet").to_pylist()}
    assert {p: r["verdict"] for p, r in rows.items()} == LEGACY_EXPECTED, {
        p: (r["verdict_detail"], json.loads(r["base_rewrites"] or "{}")) for p, r in rows.items()
    }
    assert (rows["tb-works"]["oracle_reward"], rows["tb-works"]["null_reward"]) == (1.0, 0.0)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all("run-tests.sh ->" in r["oracle_log_tail"] for r in results)


@pytest.mark.timeout(1200)
def test_two_hundred_tasks_sharing_five_environments_build_five_images(ray_local, base_image, tmp_path):
    from taskray.sandbox.daemon import docker_client
    from taskray.verify.images import IMAGE_REPO
    from taskray.verify.job import verify

    works = WRITE.format(ok="echo 1 > /logs/verifier/reward.txt", bad="echo 0 > /logs/verifier/reward.txt")
    # this run's own environments, so each is really built here, not found from an earlier run
    tasks = {
        f"t{i:03d}": harbor_tar(
            works, dockerfile=f"FROM debian:bookworm\nWORKDIR /app\nENV FLAVOUR={i % 5}-{tmp_path.name}\n"
        )
        for i in range(200)
    }
    src = corpus(tmp_path / "src", tasks)
    scanned = str(tmp_path / "scan")
    scan(str(src), scanned)
    out = tmp_path / "verified"
    verify(scanned, str(out), where=[], null=False, base_map={"debian:bookworm": base_image})
    rows = pq.read_table(out / "catalog" / "verify.parquet").to_pylist()
    assert {r["verdict"] for r in rows} == {"verified"} and len(rows) == 200
    images = {r["image"] for r in rows}
    assert len(images) == 5
    # exactly five builds: one task of each environment paid for it, the other 195 found the image
    assert sum(r["build_seconds"] > 0 for r in rows) == 5
    # a rerun of the same command does nothing and changes nothing
    before = (out / "catalog" / "verify.parquet").read_bytes()
    verify(scanned, str(out), where=[], null=False, base_map={"debian:bookworm": base_image})
    assert (out / "catalog" / "verify.parquet").read_bytes() == before
    client = docker_client()
    for image in images:
        assert image.startswith(IMAGE_REPO + ":")
        client.images.remove(image)


@pytest.mark.timeout(900)
def test_a_killed_run_and_its_rerun_give_one_row_per_task(ray_local, base_image, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from taskray.verify.job import verify

    works = WRITE.format(ok="echo 1 > /logs/verifier/reward.txt", bad="echo 0 > /logs/verifier/reward.txt")
    tasks = {
        f"k{i}": harbor_tar(works, dockerfile=f"FROM debian:bookworm\nWORKDIR /app\nENV KILLED={i % 4}\n")
        for i in range(8)
    }
    tasks["k-open"] = TASKS["accepts-anything"]
    src = corpus(tmp_path / "src", tasks)
    scanned = str(tmp_path / "scan")
    scan(str(src), scanned)
    clean = tmp_path / "clean"
    verify(scanned, str(clean), base_map={"debian:bookworm": base_image})

    killed = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "taskray",
        "verify",
        scanned,
        "--out",
        str(killed),
        "--base-map",
        f"debian:bookworm={base_image}",
        "--num-cpus",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not list((killed / "_progress").glob("*.json")):
            assert proc.poll() is None and time.monotonic() < deadline, (
                "the run ended before it could be killed"
            )
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (killed / "summary.json").exists()
    verify(scanned, str(killed), base_map={"debian:bookworm": base_image})
    got = pq.read_table(killed / "catalog" / "verify.parquet").to_pylist()
    want = pq.read_table(clean / "catalog" / "verify.parquet").to_pylist()
    assert sorted(r["path"] for r in got) == sorted(tasks)  # exactly one row per task
    assert {r["path"]: r["verdict"] for r in got} == {r["path"]: r["verdict"] for r in want}
    # nothing of either run is left running: a killed worker's containers stop with it (and are removed
    # by the next run's garbage collection)
    from taskray.sandbox.daemon import LABEL, docker_client

    running = {"label": f"{LABEL}=1", "status": "running"}
    assert docker_client().api.containers(filters=running) == []


def pack_folder(folder: Path) -> bytes:
    """A task folder as TaskTrove ships it: a gzip'd tar, modes kept."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                info = tarfile.TarInfo(str(path.relative_to(folder)))
                info.size, info.mode = path.stat().st_size, path.stat().st_mode & 0o755
                tf.addfile(info, io.BytesIO(path.read_bytes()))
    return buf.getvalue()


@pytest.mark.timeout(2400)
def test_the_real_harbor_tasks_offline(ray_local, shared_data, tmp_path):
    """Each real task ends verified, or, where this machine cannot run it, unsupported or build_failed with
    the reason in words; verified always means oracle 1 and null 0."""
    from taskray.verify.job import verify

    folders = sorted(p for p in (shared_data / "harbor-tasks").iterdir() if p.is_dir())
    src = corpus(tmp_path / "src", {p.name: pack_folder(p) for p in folders})
    scanned = str(tmp_path / "scan")
    scan(str(src), scanned)
    out = tmp_path / "verified"
    verify(scanned, str(out), offline=True, network="public")
    rows = {r["path"]: r for r in pq.read_table(out / "catalog" / "verify.parquet").to_pylist()}
    assert sorted(rows) == [p.name for p in folders]
    report = {p: (r["verdict"], r["verdict_detail"][:300]) for p, r in rows.items()}
    for row in rows.values():
        assert row["verdict"] in ("verified", "unsupported", "build_failed"), report
        assert row["verdict_detail"], report
        if row["verdict"] == "verified":
            assert (row["oracle_reward"], row["null_reward"]) == (1.0, 0.0)
        if row["verdict"] != "verified":  # what this machine lacks, in words
            assert "cannot reach" in row["verdict_detail"] or "needs" in row["verdict_detail"], report
        if row["verdict"] != "unsupported" and row["image"]:
            assert json.loads(row["base_rewrites"])  # every FROM went to the local stand-in, and says so
    assert rows["hello-world"]["verdict"] == "verified", report


@pytest.mark.timeout(600)
def test_least_recently_used_images_are_pruned_beyond_the_cap(base_image, tmp_path, monkeypatch):
    """Four environments of 5 MB each, used in order, and a cap just below their total: the oldest goes,
    unless it also carries someone else's name (removing ours frees nothing) or an actor holds it; an
    image with two of our names loses both."""
    import os

    from taskray.sandbox.daemon import docker_client
    from taskray.verify.images import IMAGE_REPO, _use_file, build, in_use, prune
    from taskray.verify.task import VerifyTask

    monkeypatch.setenv("TASKRAY_CACHE_DIR", str(tmp_path))
    client = docker_client()
    tags = []
    for i in range(4):
        dockerfile = f"FROM {base_image}\nRUN head -c 5000000 /dev/urandom > /blob-{i}-{tmp_path.name}\n"
        task = VerifyTask(
            dockerfile=dockerfile, context={"Dockerfile": dockerfile.encode()}, solution={}, tests={}
        )
        tags.append(build(client, task, {}).image)
    # every other environment image on this machine counts as used just now; ours long ago, in order
    for tag in (t for image in client.api.images(name=IMAGE_REPO) for t in image["RepoTags"] or []):
        _use_file(tag).touch()
    for age, tag in enumerate(tags):
        os.utime(_use_file(tag), (1000 + age, 1000 + age))
    prebuilt = f"taskray-test-prebuilt:{tmp_path.name}"
    alias = f"{IMAGE_REPO}:alias-{tmp_path.name}"
    client.images.get(tags[0]).tag(prebuilt)
    client.images.get(tags[3]).tag(alias)

    def total() -> int:
        ours = [
            i for i in client.df()["Images"] if any(t.startswith(IMAGE_REPO) for t in i["RepoTags"] or [])
        ]
        return sum(i["Size"] - max(i["SharedSize"], 0) for i in ours)

    def present() -> list[str]:
        return [t for t in [*tags, alias] if client.api.images(name=t)]

    try:
        assert prune(client, total() - 1) == [tags[1]] and present() == [tags[0], tags[2], tags[3], alias]
        with in_use(tags[2]):
            os.utime(_use_file(tags[2]), (1001, 1001))  # the oldest of ours alone, but held
            assert prune(client, total() - 1) == sorted([tags[3], alias])
        assert present() == [tags[0], tags[2]]
        assert prune(client, float("inf")) == []
    finally:
        for name in (prebuilt, tags[0], tags[2]):
            client.images.remove(name)
