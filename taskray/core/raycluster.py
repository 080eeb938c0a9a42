"""Connecting to Ray the same way from the CLI, `ray job submit` entrypoints and notebooks.

Without -v, Ray is asked to keep quiet: its own INFO lines, worker output streamed to the driver, the
local token-auth notice and the C++ core's log lines (RAY_BACKEND_LOG_LEVEL=fatal) are off, because our
progress lines say what a user needs. Errors still arrive: a failed item raises on the driver with its
cause, and `-v` (or TASKRAY_VERBOSE=1) shows everything Ray says.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from taskray.core.console import verbose
from taskray.errors import JobFailed

# Settings the driver has that its workers need too (object storage credentials and endpoint, Hub token).
FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "HF_TOKEN",
    "HF_ENDPOINT",
    "TASKRAY_STORAGE_RETRY_SECONDS",
    "TASKRAY_SANDBOX_IMAGE",
)
START_WAIT = 120.0  # seconds an exit waits for a background start to finish before leaving it to die


def init_ray(num_cpus: int | None = None, background: bool = False) -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`) or start a local Ray.

    `num_cpus` only applies to a local Ray: it caps parallelism on one machine. With `background`, a local
    Ray starts in a thread of its own and this call returns at once: a local start takes seconds, of
    which Ray's own processes use about half the CPUs, so the runner runs items in this process until it
    is up (core/runner.py). `wait_for_ray` waits for it; joining a cluster is quick and never backgrounded.
    """
    import ray

    if _background.thread is not None:  # started in the background already
        if not background:
            wait_for_ray()
        return
    if ray.is_initialized():
        return
    loud = verbose()
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    kwargs: dict = {"runtime_env": {"env_vars": env}} if env else {}
    kwargs["logging_level"] = logging.INFO if loud else logging.WARNING
    kwargs["log_to_driver"] = loud
    if not loud:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if os.environ.get("RAY_ADDRESS"):
        with contextlib.nullcontext() if loud else _stderr_discarded():
            ray.init(**kwargs)
        return
    # address="local": always a fresh Ray of our own, never a stray `ray start` left on the machine
    # (set RAY_ADDRESS=auto to use that one on purpose).
    kwargs.update(address="local", num_cpus=num_cpus or local_cpus(), include_dashboard=False)
    if not background:
        _start_local(kwargs, loud)
        return
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # Ray sets this handler only when started from the main thread: a SIGTERM still ends the run
            # through its clean-up (the driver's containers, Ray's shutdown)
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    atexit.register(_background.stop)
    _background.cpus = kwargs["num_cpus"]
    _background.thread = threading.Thread(
        target=_background.run, args=(kwargs, loud), name="ray-start", daemon=True
    )
    _background.thread.start()


def local_cpus() -> int:
    """The CPUs a local Ray gets unless told otherwise (Ray's own count: it reads cgroup quotas)."""
    try:
        from ray._private.utils import get_num_cpus

        return max(1, int(get_num_cpus()))
    except Exception:  # a Ray without that helper: the machine's count
        return os.cpu_count() or 1


def cluster_cpus(num_cpus: int | None = None) -> int:
    """The cluster's CPUs. A local Ray's are known before it starts (`num_cpus`, or what init_ray gave
    it): a bad request can be refused without waiting for Ray. The cluster in RAY_ADDRESS is joined
    first."""
    import ray

    if ray_starting():
        return _background.cpus
    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            return num_cpus or local_cpus()
        init_ray()
    wait_for_ray()
    return int(ray.cluster_resources().get("CPU", 1))


def ray_starting() -> bool:
    """True while a local Ray started in the background is not up yet (nor failed)."""
    return _background.thread is not None and not _background.done.is_set()


def wait_for_ray() -> None:
    """Wait for a local Ray started in the background; if its start failed, JobFailed says why."""
    if _background.thread is None:
        return
    _background.done.wait()
    if _background.error is not None:
        raise JobFailed(f"Ray could not start: {_background.error}") from _background.error


def ray_start_seconds() -> float | None:
    """How long the local Ray started in the background took to come up (benchmarks report it)."""
    return _background.seconds


def _start_local(kwargs: dict, loud: bool) -> None:
    import ray

    with contextlib.nullcontext() if loud else _stderr_discarded():
        ray.init(**kwargs)
    _reap_when_this_process_dies(ray._private.worker._global_node.get_session_dir_path())


class _background:
    """The local Ray being started by a thread (init_ray's `background`)."""

    thread: threading.Thread | None = None
    cpus = 0
    seconds: float | None = None
    done = threading.Event()
    error: BaseException | None = None

    @classmethod
    def stop(cls) -> None:
        """At exit: a start cut short would leave Ray's agents running for minutes, so a run that ends
        while Ray starts (a failed item, say) lets the start finish, then shuts Ray down."""
        import ray

        if cls.done.wait(START_WAIT):
            ray.shutdown()

    @classmethod
    def run(cls, kwargs: dict, loud: bool) -> None:
        started = time.monotonic()
        try:
            _start_local(kwargs, loud)
        except BaseException as err:
            cls.error = err
        cls.seconds = time.monotonic() - started
        cls.done.set()
        # Ray's processes are told to die with the thread that started them (PR_SET_PDEATHSIG): this
        # thread lives as long as the process does.
        threading.Event().wait()


# A watchdog process, one per local Ray. Twice a second it notes the processes descended from this one
# (Ray renames its processes, so their command lines cannot be matched); when its stdin closes (this
# process exited, even by SIGKILL) it gives Ray a moment to shut down, then kills those still alive, and
# any process too new to have been noted or renamed (its command line still names the Ray session).
# Without it a killed driver's dashboard and runtime-env agents linger for minutes.
_WATCHDOG = """
import os, select, signal, sys, time
root, session, me, seen = int(sys.argv[1]), sys.argv[2].encode(), os.getpid(), {}

def processes():
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(pid)] = (int(fields[1]), fields[19])  # parent, start time
        except (OSError, IndexError):
            pass
    return out

def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""

while True:
    closed = select.select([sys.stdin], [], [], 0.5)[0]
    procs, family, grew = processes(), {root}, True
    while grew:
        new = {pid for pid, (parent, _) in procs.items() if parent in family} - family - {me}
        family |= new
        grew = bool(new)
    seen.update({pid: procs[pid][1] for pid in family - {root}})
    if closed:
        break
time.sleep(2)
procs = processes()
doomed = {pid for pid, start in seen.items() if pid in procs and procs[pid][1] == start}
doomed |= {pid for pid in procs if pid != me and session in cmdline(pid)}
for pid in doomed:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""
_watchdogs: list[subprocess.Popen] = []


def _reap_when_this_process_dies(session_dir: str) -> None:
    if not os.path.isdir("/proc"):
        return  # not Linux: Ray's own clean-up only
    _watchdogs.append(
        subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), session_dir],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in our process group: a Ctrl-C must not end it before us
        )
    )


@contextlib.contextmanager
def _stderr_discarded() -> Iterator[None]:
    """File descriptor 2 to /dev/null while Ray starts: its C++ core announces its log level there, and
    Ray's Python loggers (bound to descriptor 2 when Ray was imported) their notices. What this program
    writes to `sys.stderr` meanwhile (progress, while Ray starts in the background) still reaches the
    real stderr through a copy of the descriptor. A failed start still raises, with its message."""
    sys.stderr.flush()
    saved = os.dup(2)
    ours = sys.stderr
    try:
        swap = ours.fileno() == 2
    except (AttributeError, OSError, ValueError):  # already not the descriptor (a test's capture)
        swap = False
    swapped = None
    if swap:  # left open afterwards: a writer may still hold it
        swapped = open(os.dup(saved), "w", buffering=1, encoding=ours.encoding, errors=ours.errors)
        sys.stderr = swapped
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if swapped is not None:
            swapped.flush()
            if sys.stderr is swapped:  # not if the program set its own meanwhile
                sys.stderr = ours
