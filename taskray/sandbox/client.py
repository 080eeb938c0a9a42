"""One warm sandbox container, driven over its attached stdin/stdout (docker SDK, no `docker exec`).

`Sandbox.run(sources, timeout)` sends one job to the runner (sandbox/runner.py, the container's PID 1)
and turns its answer into a `Result`. Everything that can go wrong on the way is sorted into the
candidate's fault (failed/timeout/oom/error) or the infrastructure's (`InfraError`): a container that
dies, a daemon that stops answering or a runner that breaks is never scored against the program.
"""

from __future__ import annotations

import hmac
import json
import secrets
import struct
import time
from dataclasses import asdict, dataclass

from taskray.sandbox.daemon import (
    LABEL,
    OWNER_LABEL,
    SESSION_LABEL,
    docker_client,
    image_name,
    owner_id,
)

STATUSES = ("passed", "failed", "timeout", "oom", "error", "infra_error")
RIGGED = "rigged:"  # a failed verdict's prefix when values or modules were rigged; the detail follows
RETURNED_TYPE = "returned an object of type"  # the runner's words for a value that is not plain data
SANDBOX_UID = 10001  # the image's non-root user (sandbox/Dockerfile)
START_TIMEOUT = 60.0  # a cold container answers in well under a second; a loaded daemon may need more
GRACE = 3.0  # beyond the job's own timeout, before the host kills the container from outside


class InfraError(RuntimeError):
    """The sandbox machinery failed (daemon, container, runner): not the program's fault; retry."""


class _Broken(Exception):
    """The runner answered out of protocol."""


@dataclass
class ContainerLimits:
    """Per-container resource limits. Memory has swap off (memswap == memory)."""

    memory_mb: int = 512
    pids: int = 64
    cpus: float = 1.0
    tmpfs_mb: int = 64
    output_cap: int = 16384  # bytes kept of stdout and of stderr (the tail)


@dataclass
class Result:
    status: str  # one of STATUSES
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_time: float = 0.0
    cpu_time: float = 0.0
    detail: str = ""  # why: signal, taint, infra error text
    attempts: int = 1
    returns: list[str] | None = None  # a probe's: types other than plain data the reference returned

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        """A sample's row (a probe's `returns` is for the job, not the row)."""
        row = asdict(self)
        del row["returns"]
        return row


def _infra(detail: str) -> Result:
    return Result("infra_error", detail=detail)


def container_settings(limits: ContainerLimits, session: str) -> dict:
    """Every isolation setting in one place (keyword arguments of `containers.create`)."""
    from docker.types import LogConfig

    scratch = "noexec,nosuid,nodev"
    return dict(
        network_mode="none",
        mem_limit=f"{limits.memory_mb}m",
        memswap_limit=f"{limits.memory_mb}m",  # equal to mem_limit: no swap
        pids_limit=limits.pids,
        nano_cpus=int(limits.cpus * 1e9),
        read_only=True,
        tmpfs={
            "/work": f"size={limits.tmpfs_mb}m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700,{scratch}",
            "/tmp": f"size=16m,mode=1777,{scratch}",
        },
        shm_size="16m",
        ipc_mode="private",
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        init=False,  # the runner must be PID 1 (see sandbox/runner.py)
        ulimits=[{"Name": "nofile", "Soft": 256, "Hard": 256}, {"Name": "core", "Soft": 0, "Hard": 0}],
        log_config=LogConfig(type=LogConfig.types.NONE),  # protocol traffic must not pile up on disk
        labels={LABEL: "1", OWNER_LABEL: owner_id(), SESSION_LABEL: session},
        hostname="sandbox",
    )


class Sandbox:
    """One running container with the runner as its main process; runs jobs one at a time."""

    def __init__(
        self, client, limits: ContainerLimits | None = None, image: str | None = None, session: str = "adhoc"
    ):
        self.client, self.limits = client, limits or ContainerLimits()
        image = image or image_name()
        self.usable = True  # False once the container must not see another job
        self.jobs = 0
        self._buf = bytearray()  # raw multiplexed bytes from the attach socket
        self._out = bytearray()  # demultiplexed stdout of the runner
        self._err = bytearray()  # the runner's own stderr (diagnostics only)
        try:
            self.container = client.containers.create(
                # detach=False + stdin_open sets StdinOnce: see the attach comment below.
                image,
                detach=False,
                stdin_open=True,
                tty=False,
                **container_settings(self.limits, session),
            )
        except Exception as e:
            raise InfraError(f"cannot create a sandbox container from {image}: {e}") from e
        try:
            # Attach before start so nothing the runner says is lost; StdinOnce makes the runner see
            # EOF (and exit) when this socket closes, e.g. because this process died.
            self._io = client.api.attach_socket(
                self.container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            self._sock = self._io._sock
            self.container.start()
            self.info = self._read_frame(time.monotonic() + START_TIMEOUT)
        except Exception as e:
            self.destroy()
            raise InfraError(f"sandbox container did not start: {e}; runner said: {self._err_text()}") from e

    @property
    def id(self) -> str:
        return self.container.id[:12]

    # -- protocol -------------------------------------------------------------------------------------
    def _recv_exact(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(left)
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise EOFError("the container closed its output")
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _read_stdout(self, n: int, deadline: float) -> bytes:
        # Docker multiplexes stdout/stderr of a tty-less container: 8-byte header (stream, 0, 0, 0, size).
        while len(self._out) < n:
            head = self._recv_exact(8, deadline)
            payload = self._recv_exact(struct.unpack(">I", head[4:])[0], deadline)
            if head[0] == 1:
                self._out += payload
            else:
                self._err = (self._err + payload)[-4000:]
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def _read_frame(self, deadline: float) -> dict:
        size = struct.unpack(">I", self._read_stdout(4, deadline))[0]
        return json.loads(self._read_stdout(size, deadline))

    def _send(self, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self._sock.settimeout(30)
        self._sock.sendall(struct.pack(">I", len(data)) + data)

    def _err_text(self) -> str:
        return self._err.decode("utf-8", "replace")[-1000:]

    # -- jobs -----------------------------------------------------------------------------------------
    def run(self, sources: list[str] | str, timeout: float = 10.0, judge: dict | None = None) -> Result:
        """Run `sources` (compiled one by one, executed in one namespace) as one job.

        With `judge` ({"entry_point", "test_source", "helpers", "allowed_types", "probe"}), sources are
        [candidate, tests]: the tests run apart from the candidate (with the helpers the prompt defines)
        and a pass needs honest values (sandbox/runner.py).

        Raises InfraError when the container or runner fails; the container is then unusable.
        """
        result = self.run_many([(sources, timeout, judge)])[0]
        if result is None or result.status == "infra_error":
            raise InfraError(result.detail if result else f"sandbox {self.id} is retired")
        return result

    def run_many(self, jobs: list[tuple]) -> list[Result | None]:
        """Run (sources, timeout, judge) jobs one after another, sent in one frame (one round trip for
        them all). A job that leaves the container unfit for more (a timeout, an OOM, leftovers) ends
        the batch: the jobs after it are None, not run. So is every job after an infrastructure failure,
        which is that job's result (`infra_error`); the container is then unusable."""
        if not self.usable:
            return [None] * len(jobs)
        frames, nonces = [], []
        for sources, timeout, judge in jobs:
            self.jobs += 1
            nonces.append(secrets.token_hex(32))  # known to this process and the harness, never the candidate
            frames.append(
                {
                    "id": self.jobs,
                    "sources": [sources] if isinstance(sources, str) else list(sources),
                    "nonce": nonces[-1],
                    "timeout": timeout,
                    "output_cap": self.limits.output_cap,
                    **({"judge": judge} if judge is not None else {}),
                }
            )
        results: list[Result | None] = []
        start = time.monotonic()
        try:
            self._send(frames if len(frames) > 1 else frames[0])
            for frame, nonce in zip(frames, nonces):
                # each job has its own deadline, counted from the answer to the one before it
                reply = self._read_frame(start + frame["timeout"] + GRACE)
                if reply.get("runner_error") or reply.get("id") != frame["id"]:
                    raise _Broken(f"sandbox {self.id} runner error: {reply.get('runner_error', reply)}")
                if reply.get("not_run"):
                    self.usable = False  # the runner stopped the frame: this container is done for
                    break
                results.append(self._result(reply, nonce))
                start = time.monotonic()
        except TimeoutError:
            # The hard outer limit: no signal inside the container is trusted to end it. The runner
            # itself ends every job at its timeout, so silence past the grace period means the runner
            # or container is stuck (paused, starved, broken): the infrastructure's failure, retried.
            self.usable = False
            self.kill()
            waited = frames[len(results)]["timeout"] + GRACE
            said = f"sandbox {self.id} gave no answer within {waited:.1f}s; container killed from outside"
            results.append(_infra(said))
        except _Broken as e:
            self.usable = False
            results.append(_infra(str(e)))
        except (OSError, EOFError, ValueError) as e:
            self.usable = False
            if self._oom_killed():
                wall = time.monotonic() - start
                results.append(Result("oom", wall_time=wall, detail="container OOM-killed"))
            else:
                said = self._err_text()
                results.append(_infra(f"sandbox {self.id} failed mid-job: {e!r}; runner said: {said}"))
        return results + [None] * (len(jobs) - len(results))

    def _result(self, r: dict, nonce: str) -> Result:
        verdict, said, returns = r["verdict"], [], None
        if verdict.startswith(nonce + "|"):  # a reference solution's probe: what types it returned
            verdict, returned = verdict[: len(nonce)], verdict[len(nonce) + 1 :]
            try:  # written by the harness (after the nonce only it knows), cut only if absurdly long
                returns = json.loads(returned)
            except ValueError:
                returns = None
        if r["timed_out"]:
            status = "timeout"
        elif r["oom"]:
            status = "oom"
        elif hmac.compare_digest(verdict.encode(), nonce.encode()):
            status = "passed"
        elif verdict == "compile-error":
            status = "error"
        else:
            status = "failed"
            if verdict.startswith(RIGGED):  # the harness's judgement (or the candidate's own words: a fail)
                said.append(verdict[len(RIGGED) :])
        if r["timed_out"] or r["oom"] or r["tainted"]:
            self.usable = False  # what a job did to this container may affect the next one
        said += r["tainted"] + ([f"killed by signal {r['signal']}"] if r["signal"] else [])
        detail = "; ".join(said)
        return Result(
            status,
            exit_code=r["exit_code"],
            stdout=r["stdout"],
            stderr=r["stderr"],
            stdout_truncated=r["stdout_truncated"],
            stderr_truncated=r["stderr_truncated"],
            wall_time=r["wall"],
            cpu_time=r["cpu"],
            detail=detail,
            returns=returns,
        )

    # -- lifecycle ------------------------------------------------------------------------------------
    def _oom_killed(self) -> bool:
        try:
            self.container.reload()
            return bool(self.container.attrs["State"].get("OOMKilled"))
        except Exception:
            return False

    def kill(self) -> None:
        try:
            self.container.kill()
        except Exception:
            pass

    def destroy(self) -> None:
        """Remove the container (killing it first). Safe to call more than once."""
        self.usable = False
        for close in (getattr(self, "_sock", None), getattr(self, "_io", None)):
            try:
                close and close.close()
            except Exception:
                pass
        try:
            self.container.remove(force=True)
        except Exception:
            pass  # already gone; `taskray sandbox gc` catches anything else by label


def run_once(
    sources: list[str] | str, timeout: float = 10.0, limits: ContainerLimits | None = None
) -> Result:
    """One job in a brand-new container (the `--fresh-container` path), removed afterwards."""
    box = Sandbox(docker_client(), limits)
    try:
        return box.run(sources, timeout)
    finally:
        box.destroy()
