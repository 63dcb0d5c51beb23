"""``python -m prov4ml_lightning``: the ``prov4ml`` command line."""

from __future__ import annotations

import sys

from prov4ml_lightning.cli import main

if __name__ == "__main__":
    sys.exit(main())
