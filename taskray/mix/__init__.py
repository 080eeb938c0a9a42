"""mix: assemble deterministic TaskMixtures from a YAML spec and export them to S3 or a folder.

Pure logic, no Ray: `spec` (the YAML spec, checked), `split` (a split's tasks, index and rows). On Ray:
`job` (render shards, store them, write the manifest). The tasks and the mixture arithmetic are
`taskray.tasks`', shared with nanochat-style training code.

    from taskray.mix import load_spec, mix
    mix(load_spec("examples/mix.yaml"), "s3://bucket/mixes/v1")
"""

from __future__ import annotations

import importlib

_EXPORTS = {"mix": "taskray.mix.job", "load_spec": "taskray.mix.spec", "parse_spec": "taskray.mix.spec"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'taskray.mix' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
