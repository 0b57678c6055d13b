"""`python -m mirror` is `imgmirror`."""

import sys

from .cli import console

sys.exit(console())
