"""taskray: curate and check LLM task datasets on Ray.

- scan: stream TaskTrove shards, parse task blobs safely, detect verifiers, write a catalog.
- eval: run HumanEval and verifier code in Docker sandboxes from Ray actors.
- mix: build deterministic TaskMixtures and export them to object storage.
"""

__version__ = "0.1.0"
