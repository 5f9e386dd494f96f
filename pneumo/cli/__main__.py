"""`python -m pneumo.cli ...` (e.g. under torchrun) is the `pneumo` command."""

import sys

from pneumo.cli import main

sys.exit(main())
