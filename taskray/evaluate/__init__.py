"""eval: run HumanEval-style samples in locked-down Docker containers from Ray actors.

Pure logic, no Docker: `humaneval` (loading problems and samples, assembling programs, pass@k).
On Ray: `job` (the actors and the run). The containers themselves are `taskray.sandbox`'s.
"""
