"""`ray job submit` entrypoint for the scan job; the same arguments as `taskray scan`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/scan.py open-thoughts/TaskTrove --out s3://bucket/tasktrove-scan

Under `ray job submit`, RAY_ADDRESS is set, so the job joins the cluster instead of starting Ray.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir holds the taskray package

from taskray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["scan", *sys.argv[1:]]))
