"""``python -m imgae_dx`` = the ``imgae-dx`` console script."""

import sys

from imgae_dx.cli import main

sys.exit(main())
