"""Shared test setup: import path for the reference model, hypothesis profiles, engine gate.

* ``tests/`` is put on ``sys.path`` so tests (and ``benchmarks/``) can ``import reference``,
  ``import oracle`` and ``import strategies``.
* Hypothesis profiles: ``default`` (bounded, no deadline: first calls compile numba kernels) and
  ``thorough`` (``HYPOTHESIS_PROFILE=thorough``, 10x the examples).
* Tests marked ``engine`` are skipped (not failed) while ``vlpi`` does not export the engine yet.
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

settings.register_profile(
    "default",
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ENGINE_NAMES = ("save_pending_tables", "save_pending_tables_many", "sync_pending_status", "sync_pending_table")


def engine_available() -> bool:
    import vlpi

    return all(hasattr(vlpi, n) for n in ENGINE_NAMES)


def pytest_collection_modifyitems(config, items):
    # The engine is part of the package: if its names are missing, fail loudly (never skip).
    if not engine_available():
        raise pytest.UsageError("vlpi does not export the engine: " + ", ".join(ENGINE_NAMES))
