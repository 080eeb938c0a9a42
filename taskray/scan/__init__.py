"""scan: stream TaskTrove shards across Ray actors, detect which tasks carry a verifier, write a catalog.

Pure logic, no Ray: `blob` (parse one task blob safely), `detect` (the verifier rules), `catalog`
(schema, rows, reading and selecting them back), `report` (summary and HTML), `synth` (test corpora).
On Ray: `job` (the scan itself) and `export` (selected tasks as Harbor folders or TaskTrove shards).

    from taskray.scan import scan, Catalog
    scan("open-thoughts/TaskTrove", "s3://bucket/scan")
    Catalog("s3://bucket/scan").sample(3, where=["has_verifier"])
"""

from __future__ import annotations

import importlib

# Loaded on first use, so importing the pure parts (blob, detect) does not import Ray or pyarrow. (The
# exporter is `taskray.scan.export.export`: a package attribute would be shadowed by its module.)
_EXPORTS = {
    "scan": "taskray.scan.job",
    "ScanResult": "taskray.scan.job",
    "Catalog": "taskray.scan.catalog",
    "CATALOG_SCHEMA": "taskray.scan.catalog",
    "read_catalog": "taskray.scan.catalog",
    "read_tasks": "taskray.scan.catalog",
    "scan_blobs": "taskray.scan.catalog",
    "select": "taskray.scan.catalog",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'taskray.scan' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
