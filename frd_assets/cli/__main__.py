"""`python -m frd_assets.cli`: the same as the `frd` entry point."""

import sys

from frd_assets.cli import main

sys.exit(main())
