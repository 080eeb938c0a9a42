"""A task as verify runs it, read from its blob: the build context, the oracle, the tests, the limits.
Pure: no Docker here.

Harbor tasks are first-class: `environment/` is the build context (its Dockerfile, or a prebuilt
`[environment].docker_image`), `solution/solve.sh` the oracle, `tests/test.sh` the verifier that writes
/logs/verifier/reward.{txt,json}, and task.toml the timeouts, CPUs, memory and internet access. The
environment's content hash names its image, so tasks that share an environment share one build.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from taskray.scan.blob import BlobLimits, executable_members, parse_blob, want_all
from taskray.scan.detect import parse_and_detect

# Harbor's defaults where task.toml says nothing
VERIFIER_TIMEOUT = 600.0
AGENT_TIMEOUT = 600.0
BUILD_TIMEOUT = 1800.0
# Terminal-Bench's defaults where task.yaml says nothing
LEGACY_AGENT_TIMEOUT = 180.0
LEGACY_TEST_TIMEOUT = 30.0
# Terminal-Bench's own runner when a task has none: pytest on test_outputs.py, every outcome summarised
DEFAULT_RUN_TESTS = b'#!/bin/bash\ncd "$TEST_DIR" && python3 -m pytest test_outputs.py -rA\n'
# The whole task is read; members are capped as the scan caps them.
TASK_LIMITS = BlobLimits(max_kept_bytes=BlobLimits().max_raw_bytes)
_FROM = re.compile(r"^(\s*FROM\s+)(?:--platform=\S+\s+)?(\S+)(.*)$", re.IGNORECASE | re.MULTILINE)
# What a container here cannot give: say which, instead of a failure that blames the task.
_NEEDS = (
    (re.compile(rb"-enable-kvm|/dev/kvm|accel=kvm"), "needs /dev/kvm (hardware virtualisation)"),
    (re.compile(rb"nvidia-smi|--gpus|CUDA_VISIBLE_DEVICES|torch\.cuda\.is_available\(\)"), "needs a GPU"),
)


class TaskError(ValueError):
    """The blob is not a task verify can run (no Dockerfile, no tests/test.sh, ...)."""


@dataclass
class VerifyTask:
    dockerfile: str  # environment/Dockerfile ("" when a prebuilt docker_image is named)
    context: dict[str, bytes]  # environment/'s files, relative to it: the build context
    solution: dict[str, bytes]  # solution/'s files (empty: no oracle)
    tests: dict[str, bytes]  # tests/'s files
    executable: set[str] = field(default_factory=set)  # names (task-relative) marked executable
    docker_image: str | None = None
    verifier_timeout: float = VERIFIER_TIMEOUT
    agent_timeout: float = AGENT_TIMEOUT
    cpus: float | None = None
    memory_mb: int | None = None
    allow_internet: bool = True
    unsupported: str | None = None  # why this machine cannot run it, in words
    legacy: bool = False  # a Terminal-Bench task: judged by pytest's summary, not a reward file

    @property
    def solve_command(self) -> list[str]:
        return ["bash", "/oracle/solution.sh"] if self.legacy else ["bash", "/solution/solve.sh"]

    @property
    def solution_dir(self) -> str:
        return "oracle" if self.legacy else "solution"

    @property
    def test_command(self) -> list[str]:
        return ["bash", "/tests/run-tests.sh"] if self.legacy else ["bash", "/tests/test.sh"]

    @property
    def test_env(self) -> dict[str, str]:
        return {"TEST_DIR": "/tests"} if self.legacy else {}

    @property
    def environment_hash(self) -> str:
        """Names the image: equal contexts (or equal prebuilt images) build once."""
        h = hashlib.sha256()
        if self.docker_image and not self.dockerfile:
            h.update(b"image\0" + self.docker_image.encode())
        for name in sorted(self.context):
            h.update(name.encode() + b"\0" + hashlib.sha256(self.context[name]).digest())
        return h.hexdigest()


def _under(files: dict[str, bytes], folder: str) -> dict[str, bytes]:
    prefix = folder + "/"
    return {name[len(prefix) :]: data for name, data in files.items() if name.startswith(prefix)}


def load_task(blob: bytes) -> VerifyTask:
    """The task in a blob, or TaskError saying why it cannot be run."""
    parsed, det = parse_and_detect(blob)
    if parsed.error:
        raise TaskError(f"unreadable blob: {parsed.error}")
    files = parse_blob(blob, want=want_all, limits=TASK_LIMITS).files
    if "task.yaml" in files and "task.toml" not in files:
        task = _legacy_task(files, det)
    else:
        task = _harbor_task(files, det)
    task.executable = executable_members(blob, TASK_LIMITS)
    everything = b"\n".join([task.dockerfile.encode(), *task.solution.values(), *task.tests.values()])
    task.unsupported = task.unsupported or next(
        (why for pattern, why in _NEEDS if pattern.search(everything)), None
    )
    return task


def _harbor_task(files: dict[str, bytes], det) -> VerifyTask:
    if "tests/test.sh" not in files:
        raise TaskError("no tests/test.sh")
    context = _under(files, "environment")
    dockerfile = context.get("Dockerfile", b"").decode("utf-8", errors="replace")
    if not dockerfile and not det.docker_image:
        raise TaskError("no environment/Dockerfile and no [environment].docker_image")
    return VerifyTask(
        dockerfile=dockerfile,
        context=context,
        solution=_under(files, "solution"),
        tests=_under(files, "tests"),
        docker_image=det.docker_image,
        verifier_timeout=det.verifier_timeout_sec or VERIFIER_TIMEOUT,
        agent_timeout=det.agent_timeout_sec or AGENT_TIMEOUT,
        cpus=det.cpus,
        memory_mb=det.memory_mb,
        allow_internet=det.allow_internet is not False,
    )


def _legacy_task(files: dict[str, bytes], det) -> VerifyTask:
    if "Dockerfile" not in files:
        raise TaskError("a Terminal-Bench task (task.yaml) without a Dockerfile")
    tests = _under(files, "tests")
    if not tests and "run-tests.sh" not in files:
        raise TaskError("a Terminal-Bench task (task.yaml) without run-tests.sh or tests/")
    solution = {"solution.sh": files["solution.sh"]} if "solution.sh" in files else {}
    task = VerifyTask(
        dockerfile=files["Dockerfile"].decode("utf-8", errors="replace"),
        context=dict(files),  # Terminal-Bench built from the task folder itself
        solution=solution,
        tests={**tests, "run-tests.sh": files.get("run-tests.sh", DEFAULT_RUN_TESTS)},
        verifier_timeout=det.verifier_timeout_sec or LEGACY_TEST_TIMEOUT,
        agent_timeout=det.agent_timeout_sec or LEGACY_AGENT_TIMEOUT,
        legacy=True,
    )
    if not solution and "solution.yaml" in files:
        # keystrokes for an interactive terminal: replaying them needs Terminal-Bench's tmux session
        task.unsupported = "its oracle is solution.yaml (interactive terminal keystrokes), not solution.sh"
    return task


def base_images(dockerfile: str) -> list[str]:
    """The images a Dockerfile builds FROM, in order (stage names excluded)."""
    stages, images = set(), []
    for m in _FROM.finditer(dockerfile):
        image, rest = m.group(2), m.group(3).split()
        if image.lower() not in stages:
            images.append(image)
        if len(rest) >= 2 and rest[0].lower() == "as":
            stages.add(rest[1].lower())
    return images


def rewrite_from(dockerfile: str, base_map: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The Dockerfile with its FROM images replaced per `base_map`, and what was replaced."""
    done: dict[str, str] = {}

    def swap(m: re.Match) -> str:
        image = m.group(2)
        if image in base_map:
            done[image] = base_map[image]
            return f"{m.group(1)}{base_map[image]}{m.group(3)}"
        return m.group(0)

    return _FROM.sub(swap, dockerfile), done
