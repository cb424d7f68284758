#!/usr/bin/env python
"""Progressive streaming training (thin wrapper of ``imgae-dx train``).

Accepts the seed's spellings as well as every ``imgae-dx train`` flag::

    python scripts/train_streaming.py --stage images_001 --epochs 5
    python scripts/train_streaming.py --stages all --epochs-per-stage 10
"""

import sys

from imgae_dx.cli import main

_ALIASES = {"--stage": "--stages", "--epochs": "--epochs-per-stage"}


def translate(argv: list[str]) -> list[str]:
    """Map ``--stage``/``--epochs`` (also ``--stage=X``) to ``--stages``/``--epochs-per-stage``."""
    out = []
    for a in argv:
        flag, eq, value = a.partition("=")
        flag = _ALIASES.get(flag, flag)
        out.append(flag + eq + value if eq else flag)
    return out


if __name__ == "__main__":
    sys.exit(main(["train", *translate(sys.argv[1:])]))
