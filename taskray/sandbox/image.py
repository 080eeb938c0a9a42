"""Building the sandbox image, with or without a container registry.

The build context is the checkout's top-level `sandbox/` folder, which the wheel ships as the package
`taskray.sandbox.context`, so a plain `pip install` can build the image too.

With a registry the plain `sandbox/Dockerfile` builds on `python:3.11-slim`. These machines (and CI) have
no registry, only a Debian package mirror, so the offline path makes the base image itself:
`debootstrap --variant=minbase --include=python3 bookworm` into a folder, `docker import` it, then the same
Dockerfile builds on top. The image carries a hash of the files it was built from, so `build` is a no-op
(well under a second) when the image already matches the checkout, and the pool refuses a stale image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from taskray.errors import BadInput
from taskray.sandbox.daemon import BuildError, SandboxUnavailable, docker_build, docker_client, image_name

REGISTRY_BASE = "python:3.11-slim"
OFFLINE_BASE = "taskray-sandbox-base:bookworm"
HASH_LABEL = "taskray.sandbox.hash"
DEBIAN_MIRROR = os.environ.get("TASKRAY_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BUILD_FILES = ("Dockerfile", "runner.py")

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_files() -> dict[str, bytes]:
    """The build context's files, from the installed package (a wheel or a checkout alike)."""
    context = resources.files("taskray.sandbox.context")
    missing = [f for f in BUILD_FILES if not context.joinpath(f).is_file()]
    if missing:
        raise SandboxUnavailable(f"{context}: missing {', '.join(missing)}; reinstall taskray")
    return {name: context.joinpath(name).read_bytes() for name in BUILD_FILES}


def content_hash() -> str:
    """What the image must have been built from: the Dockerfile and the runner, byte for byte."""
    h = hashlib.sha256()
    for name, data in build_files().items():
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:16]


def image_state(client, image: str | None = None) -> str:
    """'ok' when `image` exists and matches this checkout, else 'missing' or 'stale'."""
    import docker

    try:
        labels = client.images.get(image or image_name()).labels or {}
    except docker.errors.ImageNotFound:
        return "missing"
    return "ok" if labels.get(HASH_LABEL) == content_hash() else "stale"


def _have(client, image: str) -> bool:
    import docker

    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def _registry_base(client, log: Log) -> str | None:
    """python:3.11-slim if it is here or can be pulled, else None (no registry)."""
    import docker

    if _have(client, REGISTRY_BASE):
        return REGISTRY_BASE
    log(f"pulling {REGISTRY_BASE} ...")
    try:
        client.images.pull(REGISTRY_BASE)
        return REGISTRY_BASE
    except docker.errors.APIError as e:
        log(f"no registry ({str(e).splitlines()[0][:160]}); building the base image offline")
        return None


def build_offline_base(client, log: Log = _log, force: bool = False) -> str:
    """Debian bookworm minbase + python3 (3.11) via debootstrap, imported as OFFLINE_BASE."""
    if _have(client, OFFLINE_BASE) and not force:
        return OFFLINE_BASE
    if shutil.which("debootstrap") is None:
        raise SandboxUnavailable(
            "debootstrap is not installed: apt-get install -y debootstrap (needed offline)"
        )
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "the offline base image needs root for debootstrap: run `taskray sandbox build` "
            "as root once, or make a registry reachable"
        )
    with tempfile.TemporaryDirectory(prefix="taskray-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        log(f"debootstrap bookworm (minbase + python3) from {DEBIAN_MIRROR}; takes a minute or two ...")
        cmd = ["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(root), DEBIAN_MIRROR]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise SandboxUnavailable(f"debootstrap failed (exit {proc.returncode}): {proc.stdout[-500:]}")
        # Package caches, docs and man pages are dead weight in a sandbox.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(root / junk, ignore_errors=True)
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        log(f"importing the root filesystem as {OFFLINE_BASE} ...")
        repo, tag = OFFLINE_BASE.split(":")
        client.api.import_image_from_file(str(tarball), repository=repo, tag=tag)
    return OFFLINE_BASE


def build(mode: str = "auto", force: bool = False, log: Log = _log, client=None) -> str:
    """Build the sandbox image unless it already matches this install. mode: auto | registry | offline."""
    if mode not in ("auto", "registry", "offline"):
        raise BadInput(f"--mode {mode!r}: expected auto, registry or offline")
    client = client or docker_client()
    image = image_name()
    digest = content_hash()
    if not force and image_state(client) == "ok":
        log(f"{image} is up to date ({digest})")
        return image
    base = None if mode == "offline" else _registry_base(client, log)
    if base is None:
        if mode == "registry":
            raise SandboxUnavailable(f"cannot get {REGISTRY_BASE} from a registry; try --mode offline")
        base = build_offline_base(client, log, force=force)
    log(f"building {image} on {base} ...")
    with tempfile.TemporaryDirectory(prefix="taskray-context-") as context:
        for name, data in build_files().items():  # exactly the hashed files, nothing else
            Path(context, name).write_bytes(data)
        try:
            docker_build(
                client, context, image, {HASH_LABEL: digest}, {"BASE": base}, on_line=lambda x: log(f"  {x}")
            )
        except BuildError as e:
            raise SandboxUnavailable(f"docker build failed: {e}") from None
    if image_state(client) != "ok":
        raise SandboxUnavailable(f"docker build finished but {image} does not carry hash {digest}")
    log(f"built {image} ({digest}); superseded images removed: {prune_old_images(client)} MB")
    return image


def prune_old_images(client) -> int:
    """Remove sandbox images a rebuild left untagged (so rebuilds do not fill the disk); MB freed."""
    pruned = client.images.prune(filters={"dangling": True, "label": HASH_LABEL})
    return round((pruned.get("SpaceReclaimed") or 0) / 2**20)
