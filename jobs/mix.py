"""`ray job submit` entrypoint for `taskray mix`:

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/mix.py SPEC --out s3://bucket/mix

Under `ray job submit`, RAY_ADDRESS is set, so the job joins that cluster instead of starting one.
"""

import sys

from taskray.cli import main

if __name__ == "__main__":
    sys.exit(main(["mix", *sys.argv[1:]]))
