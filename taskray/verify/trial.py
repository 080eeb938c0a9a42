"""Running a task in Docker as Harbor does: build (or reuse) its environment image, then trials.

A trial starts a fresh container from the image, idle like Harbor's `sleep infinity` (but stopping
when this process dies), copies `solution/` to /solution and runs `bash /solution/solve.sh` (the oracle
trial only; its exit code is only logged), copies `tests/` to /tests and runs `bash /tests/test.sh`,
then reads /logs/verifier/reward.{json,txt}. Each script has its task.toml timeout, after which the host
kills the container. The container is untrusted: no host mounts, resource limits, no network unless the
task allows it and the run does, labelled like every taskray container (taskray.sandbox.daemon) so a
crashed run's leftovers are garbage-collected. Output is read as it comes and only its tail is kept, so
a flood cannot stall the reader.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from taskray.sandbox.daemon import LABEL, OWNER_LABEL, SESSION_LABEL, BuildError, docker_build, owner_id
from taskray.verify.rewards import Rewards, Trial, parse_rewards
from taskray.verify.task import BUILD_TIMEOUT, VerifyTask, rewrite_from

IMAGE_REPO = "taskray-verify"
ENV_LABEL = "taskray.verify.environment"
TAIL = 4000  # bytes of output kept per script
PIDS = 4096  # a fork bomb stops here, the host does not


class BuildFailed(RuntimeError):
    """The environment did not build: the task's fault (a verdict), not the infrastructure's."""


@dataclass
class Built:
    image: str
    image_id: str
    seconds: float  # 0 when the image was already there
    rewrites: dict[str, str]  # FROM images the base map replaced


def image_for(task: VerifyTask, rewrites: dict[str, str]) -> str:
    """The environment's image; another base map is another image (the same context on another base)."""
    key = hashlib.sha256(json.dumps([task.environment_hash, sorted(rewrites.items())]).encode()).hexdigest()
    return f"{IMAGE_REPO}:{key[:20]}"


def build(client, task: VerifyTask, base_map: dict[str, str]) -> Built:
    """The task's environment image, built once per environment hash and reused after."""
    import docker

    dockerfile, rewrites = rewrite_from(task.dockerfile, base_map)
    tag = image_for(task, rewrites)
    try:
        return Built(tag, client.images.get(tag).id, 0.0, rewrites)
    except docker.errors.ImageNotFound:
        pass
    started = time.monotonic()
    if not task.dockerfile:  # a prebuilt image: tag it as this environment's
        image = task.docker_image if task.docker_image not in base_map else base_map[task.docker_image]
        try:
            client.images.get(image).tag(IMAGE_REPO, tag.split(":")[1])
        except docker.errors.ImageNotFound:
            raise BuildFailed(
                f"the prebuilt image {image} is not on this machine and no registry answers"
            ) from None
        return Built(tag, client.images.get(tag).id, time.monotonic() - started, rewrites)
    with tempfile.TemporaryDirectory(prefix="taskray-env-") as ctx:
        for name, data in task.context.items():
            path = Path(ctx, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(dockerfile.encode() if name == "Dockerfile" else data)
        try:
            docker_build(
                client, ctx, tag, {LABEL: "1", ENV_LABEL: task.environment_hash}, timeout=BUILD_TIMEOUT
            )
        except BuildError as e:
            raise BuildFailed(str(e)) from None
    return Built(tag, client.images.get(tag).id, time.monotonic() - started, rewrites)


def _tar(files: dict[str, bytes], executable: set[str], prefix: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size, info.mtime = len(data), 0
            info.mode = 0o755 if f"{prefix}/{name}" in executable else 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Exec:
    """One command in the container; its output drained on a thread (a flood never blocks it)."""

    def __init__(self, client, container, cmd: list[str]):
        self.client, self.exit_code = client, None
        self.head, self.tail, self.total = bytearray(), bytearray(), 0  # output kept, bytes seen
        self.exec_id = client.api.exec_create(container.id, cmd, workdir=None)["Id"]
        self.stream = client.api.exec_start(self.exec_id, stream=True, demux=False)
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        try:
            for chunk in self.stream:
                self.total += len(chunk)
                if len(self.head) < TAIL // 2:
                    self.head += chunk[: TAIL // 2 - len(self.head)]
                self.tail = (self.tail + chunk)[-TAIL:]
        except Exception:
            pass  # the container was killed under us: the caller knows why

    def output(self) -> str:
        """The first and the last lines of the output: where a script first went wrong, and how it ended."""
        if self.total <= len(self.tail):  # short enough to have kept it all
            return self.tail.decode(errors="replace")
        return (self.head + b"\n[...]\n" + self.tail).decode(errors="replace")

    def wait(self, timeout: float) -> bool:
        """True when the command finished within `timeout` seconds."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            return False
        self.exit_code = self.client.api.exec_inspect(self.exec_id).get("ExitCode")
        return True


@dataclass
class TrialResult:
    trial: Trial
    seconds: float
    log_tail: str  # both scripts' output tails
    solve_tail: str = ""  # solve.sh's alone


def run_trial(client, task: VerifyTask, image: str, oracle: bool, network: str, session: str) -> TrialResult:
    """One trial in a fresh container, removed afterwards whatever happens."""
    started = time.monotonic()
    online = network == "public" and task.allow_internet
    container = client.containers.create(
        image,
        # Harbor's `sleep infinity`, but tied to this process: PID 1 waits on the attached stdin, which
        # closes when this process dies, however it dies; then the container stops, and all in it.
        command=["sh", "-c", "read -r _ || true"],
        entrypoint=[],
        stdin_open=True,
        tty=False,
        network_mode="bridge" if online else "none",
        mem_limit=f"{task.memory_mb or 2048}m",
        memswap_limit=f"{task.memory_mb or 2048}m",
        nano_cpus=int((task.cpus or 1) * 1e9),
        pids_limit=PIDS,
        security_opt=["no-new-privileges"],
        labels={LABEL: "1", OWNER_LABEL: owner_id(), SESSION_LABEL: session},
    )
    log, lifeline, solve_tail = [], None, ""
    try:
        lifeline = client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
        container.start()
        _check(container.exec_run(["mkdir", "-p", "/logs/verifier", "/logs/agent"]), "mkdir /logs")
        timed_out = None
        if oracle:
            container.put_archive("/", _tar(task.solution, task.executable, "solution"))
            solve = _Exec(client, container, ["bash", "/solution/solve.sh"])
            if not solve.wait(task.agent_timeout):
                timed_out = "solve.sh"
            solve_tail = solve.output()
            log.append(f"$ solve.sh -> {solve.exit_code}\n{solve_tail}")
        rewards = Rewards(error="not run")
        if timed_out is None:
            container.put_archive("/", _tar(task.tests, task.executable, "tests"))
            test = _Exec(client, container, ["bash", "/tests/test.sh"])
            if not test.wait(task.verifier_timeout):
                timed_out = "test.sh"
            log.append(f"$ test.sh -> {test.exit_code}\n{test.output()}")
            if timed_out is None:
                rewards = parse_rewards(_read(container, "reward.json"), _read(container, "reward.txt"))
        return TrialResult(Trial(rewards, timed_out), time.monotonic() - started, "\n".join(log), solve_tail)
    finally:
        try:
            container.remove(force=True)
        except Exception:
            pass  # already gone; gc by label catches anything else
        if lifeline is not None:
            lifeline.close()


def _check(result, what: str) -> None:
    if result.exit_code != 0:
        raise RuntimeError(f"{what} failed in the container: {result.output[-300:]!r}")


def _read(container, name: str) -> bytes | None:
    """A file of /logs/verifier, or None when the verifier did not write it."""
    import docker

    try:
        stream, _ = container.get_archive(f"/logs/verifier/{name}")
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tf:
        member = tf.next()
        if member is None or not member.isfile():
            return None
        return tf.extractfile(member).read()
