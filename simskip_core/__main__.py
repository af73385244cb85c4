"""``python -m simskip_core``: the ``simskip`` command (also the torchrun entry, see :mod:`simskip_core.cli`)."""

from __future__ import annotations

import sys

from simskip_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
