"""`taskray sandbox build | doctor | gc`: make, check and clean the Docker sandbox."""

from __future__ import annotations

import argparse
import os
import shutil


def sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="build the sandbox image (offline via debootstrap when no registry)")
    b.add_argument(
        "--mode",
        choices=("auto", "registry", "offline"),
        default="auto",
        help="auto: use python:3.11-slim if a registry answers, else build the base offline",
    )
    b.add_argument("--force", action="store_true", help="rebuild even if the image matches this checkout")
    sub.add_parser("doctor", help="say what is missing (daemon, permissions, image) and run a smoke test")
    g = sub.add_parser("gc", help="remove sandbox containers whose owner process is gone")
    g.add_argument("--all", action="store_true", help="remove every taskray container, even live owners'")


def run_sandbox(args: argparse.Namespace) -> int:
    if args.action == "build":
        from taskray.sandbox.image import build

        build(mode=args.mode, force=args.force)
        return 0
    if args.action == "gc":
        from taskray.sandbox.daemon import docker_client, gc
        from taskray.sandbox.image import prune_old_images

        client = docker_client()
        print(
            f"removed {gc(client, include_live_owners=args.all)} sandbox container(s); "
            f"superseded images removed: {prune_old_images(client)} MB"
        )
        return 0
    return doctor()


SMOKE_TEST = """
import socket
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    raise SystemExit("network reachable")
except OSError:
    print("isolated")
"""


def doctor() -> int:
    """Check each thing the sandbox needs, in order, and say in words what to do about failures."""
    ok = True

    def report(good: bool, what: str, fix: str = "") -> bool:
        nonlocal ok
        ok &= good
        print(f"[{'ok' if good else 'MISSING'}] {what}" + ("" if good or not fix else f"\n         -> {fix}"))
        return good

    sock = "/var/run/docker.sock"
    if os.path.exists(sock) and not os.access(sock, os.R_OK | os.W_OK):
        report(False, f"permission to use {sock}", "run as root or add this user to the docker group")
        return 1
    from taskray.sandbox.client import ContainerLimits, Sandbox
    from taskray.sandbox.daemon import SandboxUnavailable, docker_client, image_name, leaked_containers

    try:
        client = docker_client(timeout=30)
    except SandboxUnavailable as e:
        report(False, "Docker daemon", str(e))
        return 1
    v = client.version()
    report(True, f"Docker daemon {v.get('Version')} (API {v.get('ApiVersion')})")
    from taskray.sandbox.image import OFFLINE_BASE, REGISTRY_BASE, _have, image_state

    state = image_state(client)
    report(state == "ok", f"sandbox image {image_name()}: {state}", "run `taskray sandbox build`")
    if state != "ok" and not (_have(client, REGISTRY_BASE) or _have(client, OFFLINE_BASE)):
        report(
            shutil.which("debootstrap") is not None,
            "debootstrap (offline base image)",
            "apt-get install -y debootstrap",
        )
        report(os.geteuid() == 0, "root (debootstrap needs it)", "run `taskray sandbox build` as root once")
    leaked = leaked_containers(client)
    report(not leaked, f"leaked sandbox containers: {len(leaked)}", "run `taskray sandbox gc`")
    if state == "ok":
        try:
            box = Sandbox(client, ContainerLimits())
            try:
                r = box.run(SMOKE_TEST)
            finally:
                box.destroy()
            report(
                r.status == "passed",
                f"smoke test in a container: {r.status} {r.stdout.strip()}",
                r.stderr[-500:],
            )
        except Exception as e:
            report(False, "smoke test in a container", str(e))
    print("sandbox ready" if ok else "sandbox NOT ready")
    return 0 if ok else 1


COMMANDS = {"sandbox": (sandbox_arguments, run_sandbox)}
