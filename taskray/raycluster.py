"""Connecting to Ray the same way from the CLI, `ray job submit` entrypoints and notebooks."""

from __future__ import annotations

import os

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
)


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`) or start a local Ray.

    `num_cpus` only applies to a local Ray: it caps parallelism on one machine.
    """
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    kwargs = {"runtime_env": {"env_vars": env}} if env else {}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    else:
        # address="local": always a fresh Ray of our own, never a stray `ray start` left on the machine
        # (set RAY_ADDRESS=auto to use that one on purpose).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
