"""sky-mini benchmark: ``./scripts/bench`` runs this; the measurements live in
``scripts/benchmarks/`` (one module per measurement, one shared harness)."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from scripts.benchmarks import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
