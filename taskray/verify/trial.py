"""Running a task's trials in Docker as Harbor does, on its environment image (images.py builds it).

A trial starts a fresh container from the image, idle like Harbor's `sleep infinity` (but stopping
when this process dies), copies `solution/` to /solution and runs `bash /solution/solve.sh` (the oracle
trial only; its exit code is only logged), copies `tests/` to /tests and runs `bash /tests/test.sh`,
then reads /logs/verifier/reward.{json,txt}. Each script has its task.toml timeout, after which the host
kills the container. The container is untrusted: no host mounts, resource limits, no network unless the
task allows it and the run does, labelled like every taskray container (taskray.sandbox.daemon) so a
crashed run's leftovers are garbage-collected. Output is read as it comes and only its tail is kept, so
a flood cannot stall the reader. (A legacy Terminal-Bench task runs /oracle/solution.sh and
/tests/run-tests.sh instead, and its reward is read from pytest's summary: see task.py.)
"""

from __future__ import annotations

import io
import tarfile
import threading
import time
from dataclasses import dataclass

from taskray.sandbox.daemon import LABEL, OWNER_LABEL, SESSION_LABEL, owner_id
from taskray.verify.rewards import Rewards, Trial, parse_pytest_summary, parse_rewards
from taskray.verify.task import VerifyTask

TAIL = 4000  # bytes of output kept per script
SUMMARY = 1 << 20  # bytes of a legacy task's test output kept to read pytest's summary from
PIDS = 4096  # a fork bomb stops here, the host does not


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

    def __init__(self, client, container, cmd: list[str], env: dict | None = None, keep: int = TAIL):
        self.client, self.exit_code, self.keep = client, None, max(keep, TAIL)
        self.head, self.tail, self.total = bytearray(), bytearray(), 0  # output kept, bytes seen
        self.exec_id = client.api.exec_create(container.id, cmd, environment=env)["Id"]
        self.stream = client.api.exec_start(self.exec_id, stream=True, demux=False)
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        try:
            for chunk in self.stream:
                self.total += len(chunk)
                if len(self.head) < TAIL // 2:
                    self.head += chunk[: TAIL // 2 - len(self.head)]
                self.tail += chunk  # in place, trimmed from the front: a flood costs linear time
                if len(self.tail) > 2 * self.keep:
                    del self.tail[: len(self.tail) - self.keep]
        except Exception:
            pass  # the container was killed under us: the caller knows why

    def output(self) -> str:
        """The first and the last lines of the output: where a script first went wrong, and how it ended."""
        tail = self.tail[-TAIL:]
        if self.total <= len(tail):  # short enough to have kept it all
            return tail.decode(errors="replace")
        return (self.head + b"\n[...]\n" + tail).decode(errors="replace")

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
            container.put_archive("/", _tar(task.solution, task.executable, task.solution_dir))
            solve = _Exec(client, container, task.solve_command)
            if not solve.wait(task.agent_timeout):
                timed_out = _name(task.solve_command)
            solve_tail = solve.output()
            log.append(f"$ {_name(task.solve_command)} -> {solve.exit_code}\n{solve_tail}")
        rewards = Rewards(error="not run")
        if timed_out is None:
            container.put_archive("/", _tar(task.tests, task.executable, "tests"))
            # a legacy task's verdict is in its pytest summary, which can be long: keep enough of it
            keep = SUMMARY if task.legacy else TAIL
            test = _Exec(client, container, task.test_command, task.test_env, keep)
            script = _name(task.test_command)
            if not test.wait(task.verifier_timeout):
                timed_out = script
            log.append(f"$ {script} -> {test.exit_code}\n{test.output()}")
            if timed_out is None and task.legacy:
                rewards = parse_pytest_summary(test.tail[-test.keep :].decode(errors="replace"))
            elif timed_out is None:
                rewards = parse_rewards(_read(container, "reward.json"), _read(container, "reward.txt"))
        return TrialResult(Trial(rewards, timed_out), time.monotonic() - started, "\n".join(log), solve_tail)
    finally:
        try:
            container.remove(force=True)
        except Exception:
            pass  # already gone; gc by label catches anything else
        if lifeline is not None:
            lifeline.close()


def _name(command: list[str]) -> str:
    return command[-1].rsplit("/", 1)[-1]  # the script's file name, as rows and logs say it


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
