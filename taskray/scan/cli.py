"""`taskray scan | export | synth`: arguments in, one result line out. Errors are raised, not printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from taskray.cli import positive, regex
from taskray.errors import BadInput
from taskray.scan.sources import HUB_DATASET

SAMPLE_TASKS = 400


def builtin_sample() -> str:
    """A small synthetic corpus (all families, decoys, bombs), generated once into the user cache."""
    from taskray.scan.synth import SYNTH_VERSION, synth_corpus

    folder = Path.home() / ".cache" / "taskray" / f"sample-{SAMPLE_TASKS}-v{SYNTH_VERSION}"
    if not (folder / "done").exists():
        synth_corpus(folder, SAMPLE_TASKS, sources=4, seed=0)
        (folder / "done").write_text("ok\n")
    return str(folder)


# -- scan -----------------------------------------------------------------------------------------------
def scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        nargs="?",
        default=None,
        help=f"Hub id ({HUB_DATASET}), hf://datasets/...@rev, s3://bucket/prefix or "
        "a folder of <source>/tasks.parquet; default: the built-in sample",
    )
    parser.add_argument("--out", default="taskray-out/scan", help="local folder or s3://bucket/prefix")
    parser.add_argument("--source-filter", type=regex, default=None, help="regex on the source (folder) name")
    parser.add_argument("--limit", type=positive, default=None, help="scan at most N tasks")
    parser.add_argument("--num-cpus", type=positive, default=None, help="CPUs for a local Ray (default: all)")
    parser.add_argument(
        "--rescan",
        action="store_true",
        help="input files changed since the scan in --out began: scan them again",
    )
    parser.add_argument("--rows-per-piece", type=positive, default=None, help=argparse.SUPPRESS)


def run_scan(args: argparse.Namespace) -> int:
    from taskray.scan.job import scan

    source = args.source or builtin_sample()
    result = scan(
        source,
        args.out,
        args.source_filter,
        args.limit,
        args.num_cpus,
        args.rows_per_piece,
        rescan=args.rescan,
    )
    s = result.summary.get("total", {})
    print(
        f"scanned {s.get('n', 0):,} tasks in {result.seconds:.1f}s: {s.get('verified', 0):,} verified "
        f"({100 * s.get('verifier_rate', 0):.1f}%), {s.get('errors', 0):,} errors -> {result.out}"
    )
    return 0


# -- export ---------------------------------------------------------------------------------------------
def export_arguments(parser: argparse.ArgumentParser) -> None:
    from taskray.scan.export import EXPORT_FORMATS

    parser.add_argument("catalog", help="a scan's --out (local or s3://)")
    parser.add_argument("out", help="local folder or s3://bucket/prefix")
    parser.add_argument(
        "--where",
        action="append",
        default=None,
        help="filter, repeatable: has_verifier, !has_oracle, verifier_kind=pytest (default: has_verifier)",
    )
    parser.add_argument("--source-filter", type=regex, default=None, help="regex on the source name")
    parser.add_argument("--as", dest="fmt", choices=EXPORT_FORMATS, default="harbor")
    parser.add_argument("--overwrite", action="store_true", help="empty OUT first if it holds something else")
    parser.add_argument("--num-cpus", type=positive, default=None)


def run_export(args: argparse.Namespace) -> int:
    from taskray.scan.export import export

    manifest = export(
        args.catalog,
        args.out,
        args.where or ["has_verifier"],
        args.source_filter,
        args.fmt,
        args.num_cpus,
        overwrite=args.overwrite,
    )
    print(
        f"exported {len(manifest['written']):,} {'shards' if args.fmt == 'tasktrove' else 'tasks'} "
        f"({len(manifest['failed'])} unreadable) to {args.out}"
    )
    return 0


# -- synth ----------------------------------------------------------------------------------------------
def synth_arguments(parser: argparse.ArgumentParser) -> None:
    from taskray.scan.synth import PROFILES, REAL

    parser.add_argument("out", help="folder to write <source>/tasks.parquet shards into")
    parser.add_argument("--tasks", type=int, default=1000, help="number of task rows in all")
    parser.add_argument("--sources", type=int, default=4, help="number of source folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile",
        choices=sorted([*PROFILES, REAL]),
        default="all",
        help="all: every family alike; tasktrove: nearly all gzip'd Harbor tars, like the real corpus; "
        "real: real Harbor tasks from --tasks-from, varied, with data files (about 5 KB per task)",
    )
    parser.add_argument(
        "--tasks-from", default=None, help="with --profile real: a folder of Harbor task folders"
    )


def run_synth(args: argparse.Namespace) -> int:
    from taskray.scan.synth import synth_corpus

    if args.tasks < 0 or args.sources < 1:
        raise BadInput(f"--tasks {args.tasks} --sources {args.sources}: need --tasks >= 0 and --sources >= 1")
    files = synth_corpus(
        args.out, args.tasks, args.sources, args.seed, profile=args.profile, tasks_from=args.tasks_from
    )
    print(f"wrote {args.tasks} tasks in {len(files)} shards under {args.out}")
    return 0


COMMANDS = {
    "scan": (scan_arguments, run_scan),
    "export": (export_arguments, run_export),
    "synth": (synth_arguments, run_synth),
}
