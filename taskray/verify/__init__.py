"""verify: run each task's own verifier in its own container on Ray: the oracle must earn the reward,
an untouched environment must not. Static detection (scan) says a verifier exists; this says it works.

Pure logic, no Docker: `task` (a task's build context, oracle, tests and limits from its blob; FROM
rewriting), `rewards` (Harbor's reward files, the verdict). Docker: `trial` (build once per
environment, run trials). On Ray: `job`.
"""
