"""`ray job submit` entrypoint for the sandboxed HumanEval evaluation (same arguments as `taskray eval`).

    ray job submit --working-dir . -- python jobs/evaluate.py --problems humaneval --self-check \
        --out s3://bucket/eval

Every node that runs an EvalWorker needs Docker and the sandbox image (`taskray sandbox build`).
"""

import argparse
import sys

from taskray import evaluate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="jobs/evaluate.py", description=__doc__.splitlines()[0])
    evaluate.add_arguments(parser)
    sys.exit(evaluate.run(parser.parse_args()))
