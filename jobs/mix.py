"""`ray job submit` entrypoint for the mix job; the same arguments as `taskray mix`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/mix.py examples/mix.yaml --out s3://bucket/mixes/example

Under `ray job submit`, RAY_ADDRESS is set, so the job joins the cluster instead of starting Ray. Task
inputs given as local paths must exist on every node; on a real cluster use the Hub or s3:// inputs.
"""

from _command import run

if __name__ == "__main__":
    run("mix")
