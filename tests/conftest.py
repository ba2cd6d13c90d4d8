"""Shared test setup: import path for the reference model, hypothesis profiles, engine gate.

* ``tests/`` is put on ``sys.path`` so tests (and ``benchmarks/``) can ``import reference``,
  ``import oracle`` and ``import strategies``.
* Hypothesis profiles: ``default`` (bounded, no deadline: first calls compile numba kernels) and
  ``thorough`` (``HYPOTHESIS_PROFILE=thorough``, 10x the examples).
* If ``vlpi`` does not export the engine, collection fails loudly (engine tests are never skipped).
* Fixture ``tiny_units``: small scenarios through the engine's parallel kernels.
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


@pytest.fixture
def tiny_units(monkeypatch):
    """Shrink the engine's run/unit sizes and disable its serial fallback, so that small
    scenarios are split into many runs and work units processed by the parallel kernels
    (normally only batches of > 2**17 LPIs are). Fails loudly if the knobs are renamed."""
    import vlpi.pending as P

    monkeypatch.setattr(P, "_MAX_RUN", 3)
    monkeypatch.setattr(P, "_MIN_STRIDED", 2)
    monkeypatch.setattr(P, "_UNIT", 8)
    monkeypatch.setattr(P, "_SERIAL_BELOW", 0)
