#!/usr/bin/env python
"""Install and verify Kaggle credentials (thin wrapper of ``imgae-dx setup-kaggle``).

    python scripts/setup_kaggle.py --api-key-path kaggle.json [--dataset OWNER/SLUG] [--no-verify]
"""

import sys

from imgae_dx.cli import main

if __name__ == "__main__":
    sys.exit(main(["setup-kaggle", *sys.argv[1:]]))
