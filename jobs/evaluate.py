"""`ray job submit` entrypoint for the sandboxed HumanEval evaluation; the same arguments as `taskray eval`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/evaluate.py --problems humaneval --self-check --out s3://bucket/eval

Every node that runs an EvalWorker needs Docker and the sandbox image (`taskray sandbox build`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir holds the taskray package

from taskray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
