"""Reliability figures (torture seed, inputs tried, soak RSS/fd) printed in the run summary."""

from __future__ import annotations

from typing import Any

FIGURES: list[str] = []


def report(line: str) -> None:
    """Add a line to the "sky-mini reliability" section at the end of the pytest run."""
    FIGURES.append(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("sky-mini reliability")
        for line in FIGURES:
            terminalreporter.write_line(line)
