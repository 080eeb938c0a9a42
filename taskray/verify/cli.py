"""`taskray verify SCAN --out DEST`: arguments in, verdict counts out. Errors are raised, not printed."""

from __future__ import annotations

import argparse
import json

from taskray.cli import positive, regex
from taskray.errors import BadInput
from taskray.verify.images import DEFAULT_CAP_GB


def _base_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        image, sep, local = pair.partition("=")
        if not sep or not image or not local:
            raise BadInput(
                f"--base-map {pair!r}: expected FROM_IMAGE=LOCAL_IMAGE, like ubuntu:24.04=my-ubuntu"
            )
        out[image] = local
    return out


def _gigabytes(text: str) -> float:
    """argparse type for --max-image-gb: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a size in GB >= 0")
    return value


def verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scan", help="a finished scan's --out (local or s3://)")
    parser.add_argument("--out", default="taskray-out/verify", help="local folder or s3://bucket/prefix")
    parser.add_argument(
        "--where", action="append", default=None, help="catalog filter, repeatable (default: has_verifier)"
    )
    parser.add_argument("--source-filter", type=regex, default=None, help="regex on the source name")
    parser.add_argument("--limit", type=positive, default=None, help="verify at most N tasks")
    parser.add_argument(
        "--null",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run test.sh on the untouched environment (default: on)",
    )
    parser.add_argument(
        "--network",
        choices=("none", "public"),
        default="none",
        help="trials' network: none, or public for tasks whose task.toml allows internet",
    )
    parser.add_argument(
        "--base-map",
        action="append",
        default=[],
        metavar="FROM=IMAGE",
        help="build FROM IMAGE where a Dockerfile says FROM (offline hosts); repeatable",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="no registry here: build FROM a local Debian stand-in for ubuntu, debian and python bases",
    )
    parser.add_argument(
        "--max-image-gb",
        type=_gigabytes,
        default=DEFAULT_CAP_GB,
        help="environment images kept per machine for later runs; least recently used pruned beyond "
        f"(default: {DEFAULT_CAP_GB:g}; 0 keeps none)",
    )
    parser.add_argument("--workers", type=positive, default=None, help="verify actors (default: one per CPU)")
    parser.add_argument("--num-cpus", type=positive, default=None, help="CPUs of a local Ray")


def run_verify(args: argparse.Namespace) -> int:
    from taskray.verify.job import verify

    summary = verify(
        args.scan,
        args.out,
        args.where or ["has_verifier"],
        args.source_filter,
        args.limit,
        args.null,
        args.network,
        _base_map(args.base_map),
        args.workers,
        args.num_cpus,
        args.offline,
        args.max_image_gb,
    )
    print(
        json.dumps(
            {"out": args.out, "tasks": summary["tasks"], "verdicts": summary["verdicts"]}, sort_keys=True
        )
    )
    return 0


COMMANDS = {"verify": (verify_arguments, run_verify)}
