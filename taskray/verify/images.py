"""Environment images: the cost of verifying. Built once per environment, kept, shared, capped.

An image is named after the environment's content hash (and the base map's rewrites), so tasks with
one environment share one build and later runs reuse it. The verify job gives each environment to one
actor, so one image is never built twice at once, and on a cluster it sends an environment to a node
that already holds its image (`place`).

Kept images are capped per machine: after an environment's tasks are done, the least recently used
environment images are removed until their own layers (not the shared base layers) fit the cap. Use is
recorded on this machine's disk, next to the Docker daemon it describes: one file per image, whose
mtime is the last use and which an actor holds a shared lock on while it uses the image, so pruning
(which needs the exclusive lock) never removes an image some actor on this machine is about to run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from taskray.sandbox.daemon import LABEL, BuildError, docker_build
from taskray.verify.task import BUILD_TIMEOUT, VerifyTask, rewrite_from

IMAGE_REPO = "taskray-verify"
ENV_LABEL = "taskray.verify.environment"
DEFAULT_CAP_GB = 50.0


class BuildFailed(RuntimeError):
    """The environment did not build: the task's fault (a verdict), not the infrastructure's."""


@dataclass
class Built:
    image: str
    image_id: str
    seconds: float  # 0 when the image was already there
    rewrites: dict[str, str]  # FROM images the base map replaced


def image_for(task: VerifyTask, base_map: dict[str, str]) -> str:
    """The environment's image; another base map is another image (the same context on another base)."""
    rewrites = rewrite_from(task.dockerfile, base_map)[1]
    key = hashlib.sha256(json.dumps([task.environment_hash, sorted(rewrites.items())]).encode()).hexdigest()
    return f"{IMAGE_REPO}:{key[:20]}"


def build(client, task: VerifyTask, base_map: dict[str, str]) -> Built:
    """The task's environment image, built once per environment hash and reused after."""
    import docker

    dockerfile, rewrites = rewrite_from(task.dockerfile, base_map)
    tag = image_for(task, base_map)
    try:
        return Built(tag, client.images.get(tag).id, 0.0, rewrites)
    except docker.errors.ImageNotFound:
        pass
    started = time.monotonic()
    if not task.dockerfile:  # a prebuilt image: tag it as this environment's
        image = base_map.get(task.docker_image, task.docker_image)
        try:
            found = _local_or_pulled(client, image)
        except docker.errors.APIError as e:
            raise BuildFailed(
                f"the prebuilt image {image} is not on this machine and cannot be pulled: {e}"
            ) from None
        found.tag(IMAGE_REPO, tag.split(":")[1])
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


def place(images: dict[str, str | None], holdings: dict[str, set[str]]) -> dict[str, str]:
    """Which node should run each environment: one that already holds its image, the least loaded of
    those; environments no node holds are left out (they build wherever they land). Pure."""
    load = dict.fromkeys(holdings, 0)
    placed = {}
    for key, image in sorted(images.items()):
        holders = sorted(node for node, held in holdings.items() if image in held)
        if holders:
            node = min(holders, key=lambda n: (load[n], n))
            placed[key] = node
            load[node] += 1
    return placed


def images_here(tags: list[str]) -> list[str]:
    """The environment images among `tags` that this machine's Docker holds ([] without Docker)."""
    from taskray.sandbox.daemon import SandboxUnavailable, docker_client

    try:
        client = docker_client(timeout=30)
    except SandboxUnavailable:
        return []
    return [tag for tag in tags if client.api.images(name=tag)]


def _local_or_pulled(client, image: str):
    import docker

    try:
        return client.images.get(image)
    except docker.errors.ImageNotFound:
        return client.images.pull(image)  # a registry answers on a user's machine; not here


def _uses_dir() -> Path:
    path = Path(os.environ.get("TASKRAY_CACHE_DIR") or Path.home() / ".cache" / "taskray", "verify-images")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _use_file(tag: str) -> Path:
    return _uses_dir() / (tag.split(":", 1)[1] + ".use")


@contextlib.contextmanager
def in_use(tag: str) -> Iterator[None]:
    """Mark the image used now, and keep it from being pruned until the block ends."""
    with open(_use_file(tag), "a") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        os.utime(f.fileno())
        try:
            yield
        finally:
            os.utime(f.fileno())  # last use is the end of the use
            fcntl.flock(f, fcntl.LOCK_UN)


def _unique_bytes(image: dict) -> int:
    return max(image["Size"] - max(image.get("SharedSize", 0), 0), 0)


def prune(client, cap_bytes: float) -> list[str]:
    """Remove the least recently used environment images until their own layers fit `cap_bytes`;
    returns the tags removed. Images in use here (locked) or by a container are kept, and so are images
    that also carry a name of someone else's (a prebuilt image we tagged): removing our name would free
    nothing."""
    import docker

    listed = client.api.images(name=IMAGE_REPO)
    if sum(image["Size"] for image in listed) <= cap_bytes:  # Size counts shared layers too: an upper bound
        return []
    ours = []
    for image in client.df()["Images"]:  # df knows which bytes are shared; it takes a while to ask
        names = image.get("RepoTags") or []
        tags = sorted(t for t in names if t.startswith(IMAGE_REPO + ":"))
        if tags:
            ours.append((tags, image, len(tags) == len(names)))
    total = sum(_unique_bytes(image) for _, image, _ in ours)
    if total <= cap_bytes:
        return []

    def last_use(tags: list[str]) -> float:
        # environments with identical images share one: it was last used when any of them was
        uses = [_use_file(tag).stat().st_mtime for tag in tags if _use_file(tag).exists()]
        return max(uses, default=0.0)  # built before uses were recorded, or by hand: oldest

    removed = []
    for tags, image, only_ours in sorted(ours, key=lambda entry: last_use(entry[0])):
        if total <= cap_bytes:
            break
        if not only_ours or image.get("Containers", 0) > 0:  # a container (even stopped) keeps it anyway
            continue
        with contextlib.ExitStack() as held:
            try:
                for tag in tags:
                    fcntl.flock(held.enter_context(open(_use_file(tag), "a")), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # an actor on this machine is using it
            try:
                for tag in tags:  # the last name removed removes the image
                    client.images.remove(tag)  # never forced: an image a container still runs on stays
                    removed.append(tag)
            except docker.errors.ImageNotFound:
                pass  # removed meanwhile by another process
            except docker.errors.APIError as e:
                if e.status_code == 409:
                    continue
                raise
            total -= _unique_bytes(image)
    return removed
