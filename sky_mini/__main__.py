"""Allow ``python -m sky_mini``."""

from __future__ import annotations

from sky_mini.cli import main

if __name__ == "__main__":
    main()
