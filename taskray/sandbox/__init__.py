"""The Docker sandbox that untrusted code runs in: never on the host.

- `image`: build the image (offline via debootstrap when no registry answers).
- `client`: one warm container and its runner (`sandbox/runner.py`), jobs -> `Result`.
- `pool`: warm containers, tainted ones replaced, infra failures retried.
- `cli`: `taskray sandbox build | doctor | gc`.
"""
