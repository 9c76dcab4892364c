"""sky-mini: a small supervisor for jobs and services on one machine."""

from __future__ import annotations

__version__ = "0.1.0"
