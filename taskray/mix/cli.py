"""`taskray mix SPEC --out DEST`: arguments in, one JSON result line out. Errors are raised, not printed."""

from __future__ import annotations

import argparse
import json

from taskray.cli import positive


def mix_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="mixture spec (YAML)")
    parser.add_argument("--out", required=True, help="destination: a folder or s3://bucket/prefix")
    parser.add_argument("--seed", type=int, default=None, help="override the spec's seed")
    parser.add_argument(
        "--num-cpus",
        type=positive,
        default=None,
        help="CPUs of a local Ray (ignored when RAY_ADDRESS names a cluster)",
    )
    parser.add_argument(
        "--multipart-mb",
        type=float,
        default=None,
        help="upload shards above this size in parts (default: storage's 64 MiB)",
    )


def run_mix(args: argparse.Namespace) -> int:
    from taskray.mix.job import mix
    from taskray.mix.spec import load_spec

    spec = load_spec(args.spec, seed=args.seed)
    manifest = mix(spec, args.out, num_cpus=args.num_cpus, multipart_mb=args.multipart_mb)
    rows = {name: s["rows"] for name, s in manifest["splits"].items()}
    print(json.dumps({"out": args.out, "rows": rows, "plan_id": manifest["plan_id"]}))
    return 0


COMMANDS = {"mix": (mix_arguments, run_mix)}
