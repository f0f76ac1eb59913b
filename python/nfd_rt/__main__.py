"""`python -m nfd_rt ...`: the `nfd-rt` command, for when the environment's scripts folder is not on PATH."""

import sys

from .cli import main

sys.exit(main())
