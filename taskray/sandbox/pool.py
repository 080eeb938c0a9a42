"""A warm pool of sandbox containers: jobs cost milliseconds, tainted containers are replaced.

The pool keeps `size` started containers in a queue. A job takes one, runs, and gives it back -- unless
the job timed out, hit OOM, left processes or files behind, or the container failed; then the container
is removed and a fresh one is started in the background. Infrastructure failures are retried on another
container (`retries` times) and only reported as `infra_error` when they keep happening.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from taskray.sandbox.client import GRACE, ContainerLimits, InfraError, Result, Sandbox
from taskray.sandbox.daemon import SandboxUnavailable, docker_client, gc, image_name, new_session
from taskray.sandbox.image import image_state

WAIT_FOR_CONTAINER = 180.0  # seconds to wait for an idle container before calling it an infra failure


class SandboxPool:
    """`size` warm containers. `fresh=True` gives every job its own container (the paranoid mode)."""

    def __init__(
        self,
        size: int = 2,
        limits: ContainerLimits | None = None,
        image: str | None = None,
        fresh: bool = False,
        retries: int = 2,
        client=None,
    ):
        if size < 1:
            raise ValueError(f"pool size {size}: need at least one container")
        self.client = client or docker_client()
        image = image or image_name()
        state = image_state(self.client, image)
        if state != "ok":
            raise SandboxUnavailable(f"sandbox image {image} is {state}: run `taskray sandbox build`")
        self.size, self.limits, self.image = size, limits or ContainerLimits(), image
        self.fresh, self.retries = fresh, retries
        self.session = new_session()
        self.leaked_removed = gc(self.client)  # containers left by owners that crashed
        self.replaced = 0
        self._idle: queue.Queue[Sandbox | Exception] = queue.Queue()
        self._all: set[Sandbox] = set()
        self._lock = threading.Lock()
        self._closed = False
        # Maintenance (starting and removing containers) happens off the job path.
        self._maint = ThreadPoolExecutor(max_workers=max(2, size), thread_name_prefix="sandbox-maint")
        for f in [self._maint.submit(self._spawn) for _ in range(size)]:
            f.result()

    # -- containers -----------------------------------------------------------------------------------
    def _spawn(self) -> None:
        if self._closed:
            return
        try:
            box = Sandbox(self.client, self.limits, self.image, self.session)
        except InfraError as e:
            self._idle.put(e)  # the waiting job sees the failure instead of hanging
            return
        with self._lock:
            if self._closed:
                box.destroy()
                return
            self._all.add(box)
        self._idle.put(box)

    def _retire(self, box: Sandbox) -> None:
        with self._lock:
            self._all.discard(box)
        self.replaced += 1
        try:
            self._maint.submit(box.destroy)
            self._maint.submit(self._spawn)
        except RuntimeError:  # closing: no more maintenance
            box.destroy()

    def containers(self) -> list[str]:
        with self._lock:
            return [b.container.id for b in self._all]

    # -- jobs -----------------------------------------------------------------------------------------
    def run(self, sources: list[str] | str, timeout: float = 10.0, judge: dict | None = None) -> Result:
        """Run one job; infra failures are retried on fresh containers before being reported."""
        return self.run_many([(sources, timeout, judge)])[0]

    def run_many(self, jobs: list[tuple]) -> list[Result]:
        """Run (sources, timeout[, judge]) jobs on one container after another, in one round trip each
        time; results in input order. A job that fails for the infrastructure is retried on another
        container (`retries` times); jobs a retired container did not get to run go to the next one."""
        if self._closed:
            raise RuntimeError("the sandbox pool is closed")
        jobs = [(job[0], job[1], job[2] if len(job) > 2 else None) for job in jobs]
        results: list[Result | None] = [None] * len(jobs)
        attempts = [0] * len(jobs)
        pending = list(range(len(jobs)))
        # other callers' frames hold containers as long as this one's would: wait for that, at least
        wait = max(WAIT_FOR_CONTAINER, 2 * sum(job[1] + GRACE for job in jobs))
        while pending:
            try:
                got = self._idle.get(timeout=wait)
            except queue.Empty:
                got = InfraError(f"no sandbox container became free within {wait:.0f}s")
            if isinstance(got, Exception):
                self._maint.submit(self._spawn)
                ran = [Result("infra_error", detail=str(got))] + [None] * (len(pending) - 1)
            else:
                batch = pending[:1] if self.fresh else pending  # fresh: every job its own container
                ran = got.run_many([jobs[i] for i in batch]) + [None] * (len(pending) - len(batch))
                if got.usable and not self.fresh:
                    self._idle.put(got)
                else:
                    self._retire(got)
            still = []
            for i, result in zip(pending, ran):
                if result is None:  # not run: no attempt spent
                    still.append(i)
                    continue
                attempts[i] += 1
                result.attempts = attempts[i]
                if result.status == "infra_error" and attempts[i] <= self.retries:
                    still.append(i)
                else:
                    results[i] = result
            pending = still
        return results

    def map(self, jobs: Iterable[tuple], per_frame: int = 16) -> Iterator[Result]:
        """Run (sources, timeout[, judge]) jobs on all containers at once, up to `per_frame` jobs per
        round trip to a container; results in input order."""
        jobs = list(jobs)
        frames = max(self.size, -(-len(jobs) // per_frame))
        chunks = [jobs[i::frames] for i in range(frames)]  # interleaved: slow jobs spread out
        with ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="sandbox-job") as ex:
            done = list(ex.map(self.run_many, chunks))
        for i in range(len(jobs)):
            yield done[i % frames][i // frames]

    def close(self) -> None:
        """Remove every container of this pool (idempotent), and any a crashed owner left: a pool that
        lost an actor's node may never start another one, whose start-up clean-up would reap them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            boxes = list(self._all)
            self._all.clear()
        self._maint.shutdown(wait=True)
        for box in boxes:
            box.destroy()
        try:
            gc(self.client)
        except Exception:  # the daemon going away now leaves nothing of ours running that it could reap
            pass

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
