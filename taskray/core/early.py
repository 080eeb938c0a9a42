"""Items run while a local Ray starts: that start takes seconds in which Ray's own processes leave much
of the machine idle, so the runner (core/runner.py) runs items meanwhile, and until an actor has one.

A worker class opts in with `while_ray_starts`:

- "driver": its items run in the driver process itself (eval: the samples run in containers, nothing in
  a batch can crash the process);
- "child": they run in one child process of the driver (scan: its blobs are untrusted and parsed partly
  in C, so a crash must end a process whose item is run again, never the driver). A child that dies
  hands its item back (`Lost`) to run on Ray, counted like an actor's death. The child is a fresh
  interpreter, not a fork: the driver runs Ray's start in a thread by then, and forking a threaded
  process can leave the child holding locks nobody will release.

Either way the worker is built as in an actor, when first needed, and closed once the actors run.
"""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from taskray.core.console import verbose

CLOSE_WAIT = 60.0  # seconds a closing worker (containers, say) is waited for, as long as the actors'


class Lost(Exception):
    """The child process died with an item in hand: not the item's failure, it runs again."""

    def __init__(self, key: str):
        super().__init__(f"the child process running {key} died")
        self.key = key


class EarlyWorker:
    """The job's worker beside a starting Ray: takes one item at a time (`take`), hands back its result
    (`collect`). Wanted only while a local Ray starts in the background, for workers that opt in."""

    where = ""  # the `while_ray_starts` it serves

    def __init__(self, worker: Callable[..., Callable[[dict], dict]], worker_args: dict):
        from taskray.core.raycluster import ray_starting

        self.worker, self.args = worker, worker_args
        self.wanted = ray_starting() and getattr(worker, "while_ray_starts", None) == self.where
        self.key: str | None = None  # the item in hand

    def running(self) -> bool:
        """Whether items should still be run here: Ray is still starting."""
        from taskray.core.raycluster import ray_starting

        return self.wanted and ray_starting()

    def busy(self) -> bool:
        return self.key is not None

    def take(self, key: str, item: dict) -> None:
        raise NotImplementedError

    def collect(self, timeout: float) -> tuple[str, dict] | None:
        """The item in hand's (key, result) once it is done (waiting up to `timeout` seconds), else None.
        Raises what the item raised, or `Lost`."""
        raise NotImplementedError

    def stop(self) -> None:
        """Take no more items: the actors run the rest. An item in hand still finishes."""
        self.wanted = False

    def close(self, wait: bool = False) -> None:
        self.wanted = False


class InDriver(EarlyWorker):
    """Items run in this process, one at a time, as they are taken."""

    where = "driver"

    def __init__(self, worker: Callable[..., Callable[[dict], dict]], worker_args: dict):
        super().__init__(worker, worker_args)
        self.built: Any = None
        self.result: dict | None = None
        self.closing: threading.Thread | None = None

    def take(self, key: str, item: dict) -> None:
        if self.built is None:
            self.built = self.worker(**self.args)
        self.result = self.built(item)  # what it raises fails the run, as on an actor
        self.key = key

    def collect(self, timeout: float) -> tuple[str, dict] | None:
        if self.key is None:
            return None
        done, self.key, self.result = (self.key, self.result), None, None
        return done

    def stop(self) -> None:
        self.close()

    def close(self, wait: bool = False) -> None:
        self.wanted = False
        if self.built is not None and self.closing is None and hasattr(self.built, "close"):
            # in a thread: containers, say, take a moment to go, and the actors are waiting for items
            self.closing = threading.Thread(target=self.built.close, name="close-early-worker")
            self.closing.start()
        if wait and self.closing is not None:
            self.closing.join(CLOSE_WAIT)


class InChild(EarlyWorker):
    """Items run in a child process, one at a time, while the driver goes on (it hands the actors their
    first items as soon as they are up). Its output is discarded without -v, as the actors' is."""

    where = "child"

    def __init__(self, worker: Callable[..., Callable[[dict], dict]], worker_args: dict):
        super().__init__(worker, worker_args)
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.stopped = self.broken = False

    def stop(self) -> None:
        self.wanted, self.stopped = False, True
        if self.key is None:
            self.close()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        quiet = {} if verbose() else {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        main = "from taskray.core.early import child_main; child_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", main, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            **quiet,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send_bytes(pickle.dumps((self.worker, self.args)))

    def take(self, key: str, item: dict) -> None:
        self.key = key
        try:
            if self.proc is None:
                self._start()
            self.conn.send((key, item))
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            # it died since its last item, or what it was given does not pickle (Ray's pickling may
            # cope): the item goes to the actors, as collect says
            self.broken = True

    def collect(self, timeout: float) -> tuple[str, dict] | None:
        if self.key is None:
            return None
        try:
            if self.broken:
                raise EOFError
            if not self.conn.poll(timeout):
                return None
            status, value = self.conn.recv()
        except (EOFError, OSError):
            key, self.key = self.key, None
            self.close()
            raise Lost(key) from None
        key, self.key = self.key, None
        if self.stopped:
            self.close()  # its last item: nothing more will come
        if status == "error":
            raise value
        return key, value

    def close(self, wait: bool = False) -> None:
        self.wanted = False
        if self.proc is None:
            return
        if self.key is not None:  # closed with an item in hand: the run is ending, not waiting for it
            self.proc.kill()
        if self.conn is not None:
            self.conn.close()  # the child's next read sees the end and it closes its worker
        if wait:
            try:
                self.proc.wait(CLOSE_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def early_worker(worker: Callable[..., Callable[[dict], dict]], worker_args: dict) -> EarlyWorker:
    """The early worker a worker class asked for (`while_ray_starts`); one that is never wanted if none."""
    kind = {"driver": InDriver, "child": InChild}.get(getattr(worker, "while_ray_starts", None), EarlyWorker)
    return kind(worker, worker_args)


def child_main() -> None:
    """The child process: build the worker, then run each item sent until the driver closes its end. A
    worker that cannot be built answers every item with its error, as an actor does."""
    conn = Connection(int(sys.argv[1]))
    worker_class, args = pickle.loads(conn.recv_bytes())
    try:
        worker, broken = worker_class(**args), None
    except Exception as err:
        worker, broken = None, err
    while True:
        try:
            key, item = conn.recv()
        except EOFError:
            break
        try:
            if broken is not None:
                raise broken
            reply = ("ok", worker(item))
        except Exception as err:
            reply = ("error", _portable(err))
        try:
            conn.send(reply)
        except OSError:  # the driver is gone
            break
    if hasattr(worker, "close"):
        worker.close()


def _portable(err: Exception) -> Exception:
    """`err`, if the driver can rebuild it from its pickle; else a plain error saying the same."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")
