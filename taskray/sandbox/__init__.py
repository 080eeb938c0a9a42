"""The Docker sandbox that untrusted code runs in: never on the host.

- `daemon`: the Docker client, container labels and gc of leaked containers (eval's and verify's),
  and the one `docker build` loop.
- `image`: build the image (offline via debootstrap when no registry answers); its build context is
  the top-level `sandbox/` folder, shipped in the wheel as `taskray.sandbox.context`.
- `client`: one warm container and its runner (`sandbox/runner.py`), jobs -> `Result`.
- `pool`: warm containers, tainted ones replaced, infra failures retried.
- `cli`: `taskray sandbox build | doctor | gc`.
"""
