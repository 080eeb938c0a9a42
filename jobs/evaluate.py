"""`ray job submit` entrypoint for the sandboxed HumanEval evaluation; the same arguments as `taskray eval`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/evaluate.py --problems humaneval --self-check --out s3://bucket/eval

Every node that runs an EvalWorker needs Docker and the sandbox image (`taskray sandbox build`).
"""

from _command import run

if __name__ == "__main__":
    run("eval")
