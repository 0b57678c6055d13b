"""`python -m mirror` is `imgmirror`."""

import sys

from .cli import main

sys.exit(main())
