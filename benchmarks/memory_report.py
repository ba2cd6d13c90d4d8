#!/usr/bin/env python3
"""Memory per LPI of the engine: resident state and peak transient allocation of one call.

For each scenario (host-4096, vm-512, sparse, dense; CI-sized unless ``--big``), with byte LPI
tables (the default: ``pending_latch``/``hw`` one byte each, used in place) and with packed ones
(``LPITable(..., packed=True)``: flags as bits; rows labelled ``packed``):

* **resident B/LPI** -- what stays allocated per LPI between calls: the LPITable's four arrays
  (``lpis.nbytes``) plus the plans the engine caches on it (``lpis.cache_nbytes``), after one save,
  one restore and one EnableLPIs scan have run. Guest memory and VPTs are the guest's and the
  GIC's, not the engine's, and are not counted.
* **transient B/LPI** -- peak extra bytes allocated during one call, measured with
  ``tracemalloc`` (which sees NumPy allocations; allocations made inside numba kernels by numba's
  own runtime are *not* seen). ``cold`` is the first call on a fresh LPITable (plans are built),
  ``warm`` a later call (plans cached): the steady state of a migration that saves repeatedly.

Run ``python benchmarks/memory_report.py [--big]``; ``benchmarks/test_bench_memory.py`` runs the CI
size as a smoke test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import SIZES  # noqa: E402  (the benchmark suite's size tiers)

import vlpi  # noqa: E402
from vlpi import scenarios  # noqa: E402


@dataclass
class MemRow:
    scenario: str
    op: str
    n_lpis: int
    table_b_per_lpi: float  # lpis.nbytes / n
    cache_b_per_lpi: float  # lpis.cache_nbytes / n
    cold_transient_b_per_lpi: float
    warm_transient_b_per_lpi: float

    @property
    def resident_b_per_lpi(self) -> float:
        return self.table_b_per_lpi + self.cache_b_per_lpi


def _build(name: str, tier: str, packed: bool = False) -> scenarios.HostScenario:
    if name == "host-4096":
        return scenarios.build_host(**SIZES[name][tier], gic="v4.1", seed=0, packed=packed)
    import numpy as np

    rng = np.random.default_rng(0)
    vm = scenarios.build_vm(**SIZES[name][tier], gic="v4.1", seed=rng, packed=packed)
    return scenarios.HostScenario([vm], "v4.1", 0, rng)


def label(name: str, packed: bool) -> str:
    return f"{name} packed" if packed else name


def _peak_extra(fn: Callable[[], object]) -> int:
    """Peak bytes allocated (tracemalloc) above the level at entry, during ``fn()``."""
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    return max(0, peak - base)


def _ops(scen: scenarios.HostScenario) -> dict[str, Callable[[], object]]:
    jobs, g = scen.jobs, scen.has_gicv4_1
    ops = {
        "save": lambda: vlpi.save_pending_tables_many(jobs, has_gicv4_1=g),
        "restore": lambda: [vlpi.sync_pending_status(m, pb, lp) for m, pb, lp, _ in jobs],
    }
    if len(jobs) == 1:
        m, pb, lp, _ = jobs[0]
        ops["scan"] = lambda: vlpi.sync_pending_table(m, pb, lp, 0)
    return ops


def measure(name: str, tier: str = "ci", packed: bool = False) -> list[MemRow]:
    """Rows (one per operation) for one scenario. Builds the scenario (fresh LPITables) itself."""
    rows = []
    # warm the numba kernels on a throwaway scenario first, so compilation is not measured
    warm = _build(name, "ci", packed)
    for f in _ops(warm).values():
        f()
    del warm
    for op in _ops(_build(name, "ci", packed)):
        scen = _build(name, tier, packed)  # fresh LPITables: no cached plan yet
        f = _ops(scen)[op]
        n = scen.n_lpis
        was_tracing = tracemalloc.is_tracing()
        if not was_tracing:
            tracemalloc.start()
        try:
            scen.randomize(1)
            cold = _peak_extra(f)
            scen.randomize(1)
            warm_b = _peak_extra(f)
        finally:
            if not was_tracing:
                tracemalloc.stop()
        lp = [j[2] for j in scen.jobs]
        rows.append(
            MemRow(
                scenario=label(name, packed),
                op=op,
                n_lpis=n,
                table_b_per_lpi=sum(x.nbytes for x in lp) / n,
                cache_b_per_lpi=sum(x.cache_nbytes for x in lp) / n,
                cold_transient_b_per_lpi=cold / n,
                warm_transient_b_per_lpi=warm_b / n,
            )
        )
    return rows


def resident_after_all(name: str, tier: str = "ci", packed: bool = False) -> tuple[int, float, float]:
    """(n_lpis, table B/LPI, cache B/LPI) after save, restore and scan have all run once."""
    scen = _build(name, tier, packed)
    for f in _ops(scen).values():
        f()
    lp = [j[2] for j in scen.jobs]
    n = scen.n_lpis
    return n, sum(x.nbytes for x in lp) / n, sum(x.cache_nbytes for x in lp) / n


def render(rows: list[MemRow], resident: dict[str, tuple[int, float, float]], tier: str) -> str:
    out = [
        f"Engine memory per LPI ({tier} sizes; transient = tracemalloc peak, NumPy allocations only)",
        "",
        "| scenario | op | LPIs | LPITable B/LPI | cached plans B/LPI | transient cold B/LPI | transient warm B/LPI |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.scenario} | {r.op} | {r.n_lpis:,} | {r.table_b_per_lpi:.2f} | {r.cache_b_per_lpi:.2f} | "
            f"{r.cold_transient_b_per_lpi:.2f} | {r.warm_transient_b_per_lpi:.2f} |"
        )
    out += ["", "| scenario | LPIs | resident B/LPI after save+restore+scan (table + plans) |", "|---|---:|---:|"]
    for name, (n, t, c) in resident.items():
        out.append(f"| {name} | {n:,} | {t + c:.2f} ({t:.2f} + {c:.2f}) |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Engine memory per LPI (resident and transient)")
    ap.add_argument("--big", action="store_true", help="full-size scenarios (host-4096: 3,670,016 LPIs)")
    ap.add_argument("--scenario", action="append", choices=list(SIZES), help="limit to these scenarios")
    a = ap.parse_args(argv)
    tier = "big" if a.big else "ci"
    names = a.scenario or list(SIZES)
    rows: list[MemRow] = []
    resident = {}
    for name in names:
        for packed in (False, True):
            rows += measure(name, tier, packed)
            resident[label(name, packed)] = resident_after_all(name, tier, packed)
    sys.stdout.write(render(rows, resident, tier))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
