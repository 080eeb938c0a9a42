"""Local stand-ins for the common base images, for hosts that reach no container registry (`--offline`).

One image serves them all: Debian bookworm (debootstrap'd, as the sandbox's base is) with python3, pip,
venv, curl and CA certificates, plus what Harbor test scripts download from the internet but a package
registry also provides: `uv` (and `$HOME/.local/bin/env`, which its installer writes) and `pytest`. It is
not Ubuntu: a task whose packages exist only there fails to build, and says so. Every rewrite is
recorded in the task's row, so an offline verdict is never mistaken for an upstream one.
"""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from pathlib import Path

from taskray.sandbox.daemon import LABEL, BuildError, SandboxUnavailable, docker_build

BASE_IMAGE = "taskray-verify-base:bookworm"
HASH_LABEL = "taskray.verify.base.hash"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")  # Debian's place for locally added CAs
COMMON_BASES = (
    "ubuntu:24.04",
    "ubuntu:22.04",
    "ubuntu:latest",
    "debian:bookworm",
    "debian:bookworm-slim",
    "debian:bullseye",
    "debian:bullseye-slim",
    "python:3.11-slim",
    "python:3.12-slim",
    "python:3.13-slim",
    "python:3.11-slim-bookworm",
    "python:3.12-slim-bookworm",
    "python:3.13-slim-bookworm",
    "buildpack-deps:bookworm",
)
DOCKERFILE = """\
ARG BASE
FROM ${BASE}
ENV PATH=/root/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_BREAK_SYSTEM_PACKAGES=1
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3-pip python3-venv python3-dev curl ca-certificates \\
 && rm -rf /var/lib/apt/lists/* \\
 && ln -sf /usr/bin/python3 /usr/local/bin/python && ln -sf /usr/bin/pip3 /usr/local/bin/pip
# The host's own extra CAs (a TLS-intercepting proxy in front of the package registries trusts them):
# what the host can fetch, the tasks' scripts can fetch too.
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
RUN pip install --no-cache-dir uv pytest \\
 && mkdir -p /root/.local/bin && ln -sf "$(command -v uv)" /root/.local/bin/uv \\
 && printf 'export PATH="$HOME/.local/bin:$PATH"\\n' > /root/.local/bin/env
WORKDIR /app
"""


def default_map() -> dict[str, str]:
    return dict.fromkeys(COMMON_BASES, BASE_IMAGE)


def ensure_base(client) -> str:
    """Build BASE_IMAGE unless this machine has it as this file describes; returns its name. One build at
    a time per machine (a file lock), since every verify actor on a node may ask at once."""
    import docker

    from taskray.sandbox.image import build_offline_base

    extra_ca = (
        {p.name: p.read_bytes() for p in sorted(HOST_CA_DIR.glob("*.crt"))} if HOST_CA_DIR.is_dir() else {}
    )
    h = hashlib.sha256(DOCKERFILE.encode())
    for name, data in extra_ca.items():
        h.update(name.encode() + b"\0" + data)
    digest = h.hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / "taskray-verify-base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (client.images.get(BASE_IMAGE).labels or {}).get(HASH_LABEL) == digest:
                return BASE_IMAGE
        except docker.errors.ImageNotFound:
            pass
        debian = build_offline_base(client, log=lambda _: None)
        with tempfile.TemporaryDirectory(prefix="taskray-base-") as ctx:
            Path(ctx, "Dockerfile").write_text(DOCKERFILE)
            Path(ctx, "extra-ca").mkdir()
            Path(ctx, "extra-ca", "README").write_text("the host's extra CA certificates\n")
            for name, data in extra_ca.items():
                Path(ctx, "extra-ca", name).write_bytes(data)
            try:
                docker_build(client, ctx, BASE_IMAGE, {LABEL: "1", HASH_LABEL: digest}, {"BASE": debian})
            except BuildError as e:
                raise SandboxUnavailable(f"cannot build the offline base {BASE_IMAGE}: {e}") from None
    return BASE_IMAGE
