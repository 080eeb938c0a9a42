"""Connecting to Ray the same way from the CLI, `ray job submit` entrypoints and notebooks.

Without -v, Ray is asked to keep quiet: its own INFO lines, Ray Data's execution banners and progress
bars, worker output streamed to the driver, the local token-auth notice and the C++ core's log lines
(RAY_BACKEND_LOG_LEVEL=fatal: Ray Data's actors trip a harmless "constructor arguments in the object
store" error line, ray-project/ray#57733) are off, because our progress lines say what a user needs.
Errors still arrive: a failed item raises on the driver with its cause, and `-v` (or TASKRAY_VERBOSE=1)
shows everything Ray says.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
        for name in ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress"):
            logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.nullcontext() if loud else _stderr_discarded():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**kwargs)
        else:
            # address="local": always a fresh Ray of our own, never a stray `ray start` left on the machine
            # (set RAY_ADDRESS=auto to use that one on purpose).
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    quiet_ray_data(loud)


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


def quiet_ray_data(loud: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = loud
    ctx.print_on_execution_start = loud
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.INFO if loud else logging.WARNING)
