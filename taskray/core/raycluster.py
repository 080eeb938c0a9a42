"""Connecting to Ray the same way from the CLI, `ray job submit` entrypoints and notebooks.

Without -v, Ray is asked to keep quiet: its own INFO lines, worker output streamed to the driver, the
local token-auth notice and the C++ core's log lines (RAY_BACKEND_LOG_LEVEL=fatal) are off, because our
progress lines say what a user needs. Errors still arrive: a failed item raises on the driver with its
cause, and `-v` (or TASKRAY_VERBOSE=1) shows everything Ray says.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

from taskray.core.console import verbose

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


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`) or start a local Ray.

    `num_cpus` only applies to a local Ray: it caps parallelism on one machine.
    """
    import ray

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
    with contextlib.nullcontext() if loud else _stderr_discarded():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**kwargs)
        else:
            # address="local": always a fresh Ray of our own, never a stray `ray start` left on the machine
            # (set RAY_ADDRESS=auto to use that one on purpose).
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    if not os.environ.get("RAY_ADDRESS"):
        _reap_when_this_process_dies(ray._private.worker._global_node.get_session_dir_path())


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
    """File descriptor 2 to /dev/null while Ray starts: its C++ core announces its log level there.
    A failed start still raises, with its message, once stderr is back."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)

