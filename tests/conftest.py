"""Shared fixtures. End-to-end tests need root (namespaces, TAP devices)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.netns import World

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")


@pytest.fixture
def world() -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    w = World()
    try:
        yield w
    finally:
        w.close()
