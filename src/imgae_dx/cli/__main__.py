"""``python -m imgae_dx.cli`` = the ``imgae-dx`` console script."""

import sys

from imgae_dx.cli import main

sys.exit(main())
