"""`ray job submit` entrypoint for the scan job; the same arguments as `taskray scan`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/scan.py open-thoughts/TaskTrove --out s3://bucket/tasktrove-scan

Under `ray job submit`, RAY_ADDRESS is set, so the job joins the cluster instead of starting Ray.
"""

from _command import run

if __name__ == "__main__":
    run("scan")
