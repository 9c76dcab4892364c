"""Shared fixtures: every test that runs sky-mini gets its own temporary home."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.helpers import SkyMini


@pytest.fixture
def sky(tmp_path: os.PathLike[str]) -> Iterator[SkyMini]:
    home = os.path.join(str(tmp_path), "home")
    instance = SkyMini(home=home)
    try:
        yield instance
    finally:
        instance.cleanup()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "root" in item.keywords and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root (cgroups, namespaces)"))
