"""Smoke tests of benchmarks/jit_report.py: a warm start against the shared numba cache (default
run) and a cold compile into a fresh cache directory (``--big`` only: it compiles every kernel)."""

from __future__ import annotations

import os

import jit_report as jr
import pytest


def test_warm_start_subprocess():
    cache = os.environ.get("NUMBA_CACHE_DIR")
    if not cache:
        from vlpi import _config

        cache = _config.CACHE_DIR
    jr.run_child(cache, ("save",))  # make sure the cache holds the save kernels
    r = jr.run_child(cache, ("save",))
    assert r["numba_cache_dir"] == cache
    for k in ("import_vlpi", "first_save", "second_save", "total_in_process", "process_wall_s"):
        assert r[k] >= 0
    assert r["process_wall_s"] >= r["total_in_process"]


@pytest.mark.big
def test_cold_compile_report(tmp_path):
    r = jr.report(str(tmp_path / "cache"), ops=("save", "restore"))
    assert r["cold_compile_s"] > 0
    assert any(os.scandir(tmp_path / "cache"))  # the cold child populated the cache
    text = jr.render(r, ops=("save", "restore"))
    assert "Warm start" in text
