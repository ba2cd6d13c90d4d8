"""Smoke test of benchmarks/memory_report.py (CI sizes): the report runs and its figures are sane."""

from __future__ import annotations

import math

import memory_report as mr
import pytest


@pytest.mark.parametrize("scenario", ["host-4096", "sparse"])
def test_memory_report_smoke(scenario):
    rows = mr.measure(scenario, "ci")
    assert {r.op for r in rows} >= {"save", "restore"}
    for r in rows:
        assert r.n_lpis > 0
        # the LPITable itself: uint32 intid + int8 target (these VMs have < 127 vCPUs) + 1-byte
        # latch + 1-byte hw
        assert r.table_b_per_lpi == 7.0
        assert r.cache_b_per_lpi >= 0 and math.isfinite(r.cache_b_per_lpi)
        assert r.cold_transient_b_per_lpi >= 0 and r.warm_transient_b_per_lpi >= 0
    n, t, c = mr.resident_after_all(scenario, "ci")
    assert n == rows[0].n_lpis and t == 7.0 and c >= 0
    text = mr.render(rows, {scenario: (n, t, c)}, "ci")
    assert f"| {scenario} | save |" in text


@pytest.mark.parametrize("scenario", ["host-4096", "sparse"])
def test_memory_report_packed_tables(scenario):
    """Packed tables hold the flags as bits: intid 4 + target 1 + 2 bits per LPI (plus pad words),
    and the engine keeps no flag snapshot for them (its cache is smaller than for byte tables)."""
    rows = mr.measure(scenario, "ci", packed=True)
    assert all(r.scenario == f"{scenario} packed" for r in rows)
    n, t, c = mr.resident_after_all(scenario, "ci", packed=True)
    assert 5.25 <= t < 5.35  # ceil(n / 64) + 2 words per flag and VM: a little over 0.25 B/LPI
    _, _, c_bytes = mr.resident_after_all(scenario, "ci")
    assert c < c_bytes  # no per-table flag snapshot


def test_tracemalloc_sees_numpy_allocations():
    """The transient measure is meaningful: a 1 MiB NumPy temporary shows up in the peak."""
    import tracemalloc

    import numpy as np

    tracemalloc.start()
    try:
        peak = mr._peak_extra(lambda: np.ones(1 << 20, dtype=np.uint8).sum())
    finally:
        tracemalloc.stop()
    assert peak >= 1 << 20
