"""The Docker daemon as the sandbox sees it: a client, the image's name, and container hygiene.

Every container taskray starts carries `taskray=1`, its owner process (`host:pid:start time`) and a
session label. An owner that died (a killed worker, a crashed driver) leaves containers behind; `gc`
removes those, from any number of processes at once: a container another process is already removing
is not an error. Eval's pools use this, and so will every job that runs containers.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable

from taskray.errors import JobFailed

LABEL = "taskray"
OWNER_LABEL = "taskray.owner"
SESSION_LABEL = "taskray.session"


class SandboxUnavailable(JobFailed):
    """No Docker daemon, no permission to use it, or no sandbox image: the machine cannot run jobs."""


def image_name() -> str:
    """The sandbox image's tag; TASKRAY_SANDBOX_IMAGE names another (a registry copy on a cluster)."""
    return os.environ.get("TASKRAY_SANDBOX_IMAGE") or "taskray-sandbox:latest"


def docker_client(timeout: int = 120):
    """A docker SDK client, or a SandboxUnavailable that says what is wrong in words."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except docker.errors.DockerException as e:
        raise SandboxUnavailable(
            f"cannot reach the Docker daemon ({e}); start it (`bash scripts/start-dockerd.sh`) "
            "and check that this user may use /var/run/docker.sock (root or the docker group)"
        ) from e


def process_start(pid: int) -> str | None:
    """Start time of `pid` in clock ticks (tells a live owner from a reused pid), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid())}"


def owner_alive(owner: str) -> bool:
    """Whether the process named by an owner label still runs. Owners on other hosts count as alive."""
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return process_start(int(pid)) == start


def leaked_containers(client, include_live_owners: bool = False) -> list[str]:
    """Ids of taskray containers whose owner process is gone (or of all of them, include_live_owners)."""
    # One listing call with labels (no inspect per container): other pools remove containers meanwhile.
    found = client.api.containers(all=True, filters={"label": f"{LABEL}=1"})
    return [
        c["Id"]
        for c in found
        if include_live_owners or not owner_alive((c.get("Labels") or {}).get(OWNER_LABEL, ""))
    ]


def gc(client=None, include_live_owners: bool = False) -> int:
    """Remove leaked sandbox containers; returns how many."""
    import docker

    client = client or docker_client()
    removed = 0
    for cid in leaked_containers(client, include_live_owners):
        try:
            client.api.remove_container(cid, force=True)
            removed += 1
        except docker.errors.NotFound:
            pass  # someone else removed it first
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: another process is removing it right now
                raise
    return removed


def new_session() -> str:
    return secrets.token_hex(4)


class BuildError(RuntimeError):
    """`docker build` failed; the message ends with the build's last lines."""


def docker_build(
    client,
    context: str,
    tag: str,
    labels: dict[str, str],
    buildargs: dict[str, str] | None = None,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Build `context` as `tag`, offline-friendly (never pulls), streaming its lines to `on_line`."""
    import docker

    lines: list[str] = []
    try:
        for chunk in client.api.build(
            path=context,
            tag=tag,
            buildargs=buildargs or {},
            labels=labels,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            timeout=timeout,
        ):
            if "error" in chunk:
                raise BuildError(f"{chunk['error'].strip()} | {' '.join(lines[-5:])[-800:]}")
            line = chunk.get("stream", "").strip()
            if line:
                lines.append(line)
                if on_line:
                    on_line(line)
    except docker.errors.APIError as e:
        raise BuildError(str(e)[:800]) from None
