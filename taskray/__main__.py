"""`python -m taskray ...` is the same as the `taskray` command."""

import sys

from taskray.cli import main

sys.exit(main())
