"""`ray job submit` entrypoint for the verify job; the same arguments as `taskray verify`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/verify.py s3://bucket/tasktrove-scan --out s3://bucket/verified

Every node that runs a VerifyWorker needs Docker (and, offline, the base images named by --base-map).
"""

from _command import run

if __name__ == "__main__":
    run("verify")
