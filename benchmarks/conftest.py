"""pytest hooks of the benchmark suite: ``--big`` enables the full-size tiers (marker ``big``).

The shared harness (sizes, scenarios, implementations, ``run_bench``) is :mod:`harness`.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_addoption(parser):
    parser.addoption("--big", action="store_true", default=False, help="run the full-size benchmark tiers")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--big"):
        return
    skip = pytest.mark.skip(reason="full-size tier: run with --big")
    for item in items:
        if item.get_closest_marker("big") is not None:
            item.add_marker(skip)
