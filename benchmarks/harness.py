"""Shared harness of the benchmark suite: size tiers, scenarios, the implementation registry.

(A module of its own, not ``conftest.py``: ``tests/conftest.py`` would shadow ``import conftest``
when tests and benchmarks run in one session. ``benchmarks/conftest.py`` holds the pytest hooks.)

* A normal ``pytest`` run (``--benchmark-disable`` in addopts) runs each CI-sized benchmark once
  as a smoke test; ``--benchmark-enable`` times them for real; ``--big`` adds the full-size tiers
  (host-4096 at 3,670,016 LPIs, ...), which are skipped otherwise.
* Every benchmark goes through :func:`run_bench`: it warms the JIT up outside the timing, uses
  ``benchmark.pedantic(setup=...)`` when a round mutates state (fresh, identical tables every
  round), names the group after the scenario so engine and baselines line up, and records
  ``impl``, ``scenario``, ``tier``, ``n_lpis``, ``ns_per_lpi`` and ``lpis_per_s`` in
  ``extra_info`` (``scripts/bench_table.py`` turns the JSON into the README table).
* ``VLPI_BENCH_ROUNDS`` overrides the number of timed rounds (the notebook uses 1-2).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baselines as bl  # noqa: E402

from vlpi import scenarios  # noqa: E402

# ---------------------------------------------------------------------------- size tiers
#: scenario -> tier -> builder kwargs. "ci" runs by default, "big" only with --big.
SIZES: dict[str, dict[str, dict]] = {
    # host-4096: 64 VMs x 64 vCPUs, IDbits 16 (3,670,016 LPIs); CI: 4 VMs x 16 vCPUs, IDbits 14
    "host-4096": {"ci": dict(vms=4, vcpus=16, id_bits=14), "big": dict(vms=64, vcpus=64, id_bits=16)},
    # one VM with 512 vCPUs, IDbits 16, every INTID an LPI (57,344 LPIs)
    "vm-512": {"ci": dict(vcpus=512, id_bits=14), "big": dict(vcpus=512, id_bits=16)},
    # sparse: IDbits 20, 1024 random LPIs per vCPU
    "sparse": {
        "ci": dict(vcpus=8, id_bits=20, lpis_per_vcpu=1024),
        "big": dict(vcpus=64, id_bits=20, lpis_per_vcpu=1024),
    },
    # dense: one vCPU owning every INTID, 8 LPIs in every byte of its table
    "dense": {"ci": dict(vcpus=1, id_bits=15), "big": dict(vcpus=1, id_bits=20)},
}
TIERS = ["ci", pytest.param("big", marks=pytest.mark.big)]
#: pure Python costs ~microseconds per LPI: at full size it runs on the first VMs only
PYTHON_MAX_LPIS = 120_000


_SCENARIOS: dict = {}


def get_host(tier: str, packed: bool = False) -> scenarios.HostScenario:
    """host-4096 at ``tier`` size (built once per session, then re-randomised per round); with
    ``packed``, the same host with packed LPI tables (flags as bits)."""
    key = ("host-4096", tier, packed)
    if key not in _SCENARIOS:
        _SCENARIOS[key] = scenarios.build_host(**SIZES["host-4096"][tier], gic="v4.1", seed=0, packed=packed)
    return _SCENARIOS[key]


def packed_impl(impl: str) -> bool:
    """Implementations named ``*_packed`` run the engine on packed LPI tables."""
    return impl.endswith("_packed")


def get_vm(name: str, tier: str) -> scenarios.HostScenario:
    """A one-VM scenario wrapped as a HostScenario (same jobs/randomize interface)."""
    key = (name, tier)
    if key not in _SCENARIOS:
        import numpy as np

        rng = np.random.default_rng(0)
        vm = scenarios.build_vm(**SIZES[name][tier], gic="v4.1", seed=rng)
        _SCENARIOS[key] = scenarios.HostScenario([vm], "v4.1", 0, rng)
    return _SCENARIOS[key]


# ------------------------------------------------------------------------ implementations
def _per_vm(f: Callable, **kw) -> Callable:
    def run(jobs, has_gicv4_1):
        return [f(m, pb, lp, vpt=vpt, has_gicv4_1=has_gicv4_1, **kw) for m, pb, lp, vpt in jobs]

    return run


def _engine_many(jobs, has_gicv4_1):
    import vlpi

    return vlpi.save_pending_tables_many(jobs, has_gicv4_1=has_gicv4_1)


def _engine_save(m, pb, lp, *, vpt=None, has_gicv4_1=False):
    import vlpi

    return vlpi.save_pending_tables(m, pb, lp, vpt=vpt, has_gicv4_1=has_gicv4_1)


def _restore_per_vm(f: Callable) -> Callable:
    def run(jobs, has_gicv4_1=False):
        return [f(m, pb, lp) for m, pb, lp, _ in jobs]

    return run


def _engine_restore(m, pb, lp):
    import vlpi

    return vlpi.sync_pending_status(m, pb, lp)


def _engine_scan(m, pb, lp, vcpu):
    import vlpi

    return vlpi.sync_pending_table(m, pb, lp, vcpu)


SCAN_IMPLS: dict[str, Callable] = {"engine": _engine_scan, **bl.SCAN_BASELINES}

SAVE_IMPLS: dict[str, Callable] = {
    "engine_many": _engine_many,
    "engine_many_packed": _engine_many,  # the same call, on packed tables (packed_impl)
    "engine": _per_vm(_engine_save),
    **{name: _per_vm(f) for name, f in bl.SAVE_BASELINES.items()},
}
RESTORE_IMPLS: dict[str, Callable] = {
    "engine": _restore_per_vm(_engine_restore),
    "engine_packed": _restore_per_vm(_engine_restore),  # on packed tables (packed_impl)
    **{name: _restore_per_vm(f) for name, f in bl.RESTORE_BASELINES.items()},
}


def impl_unavailable(name: str) -> str | None:
    import vlpi

    if name.startswith("engine"):
        if not hasattr(vlpi, "save_pending_tables"):
            return "vlpi does not export the engine"
        return None
    return bl.unavailable_reason(name)


def require_available(name: str) -> None:
    """Every implementation ships with vlpi (dependencies included): unavailable is a failure,
    except the plain-C kernel loop, which needs a C compiler on the machine and is skipped without."""
    r = impl_unavailable(name)
    if r and name == "c_kernel_loop":
        pytest.skip(r)
    if r:
        pytest.fail(r)


# ------------------------------------------------------------------------------- harness
@dataclass
class Rounds:
    """Timed rounds per tier; pure Python gets fewer."""

    ci: int = 10
    big: int = 3

    def get(self, tier: str, impl: str, big: int | None = None) -> int:
        """Rounds of ``impl`` at ``tier``; ``big`` overrides the big tier's count for one group."""
        env = os.environ.get("VLPI_BENCH_ROUNDS")
        if env:
            return max(1, int(env))
        n = self.ci if tier == "ci" else (big or self.big)
        return max(1, n // 5) if impl == "python" else n


ROUNDS = Rounds()


def run_bench(
    benchmark,
    fn: Callable[[], object],
    *,
    scenario: str,
    op: str,
    tier: str,
    impl: str,
    n_lpis: int,
    setup: Callable[[], None] | None = None,
    rounds: int | None = None,
    note: str = "",
):
    """Time ``fn()`` (no arguments) with pytest-benchmark and record per-LPI figures.

    ``setup`` (no arguments) runs before every round, outside the timing, and is where a round
    that mutates tables gets fresh ones. One untimed warm-up call (after a setup) compiles or
    loads the numba kernels and the engine's cached plans first; it is skipped in smoke runs
    (``--benchmark-disable``), where the single call is the whole test.
    Returns the last result of ``fn``.
    """
    benchmark.group = f"{op} {scenario} [{tier}]"
    benchmark.extra_info.update(impl=impl, scenario=scenario, op=op, tier=tier, n_lpis=int(n_lpis), note=note)
    if not benchmark.disabled:
        if setup is not None:
            setup()
        fn()  # warm-up: JIT compile / cache load, plan building
    out = {}

    def call():
        out["r"] = fn()

    rounds = rounds or ROUNDS.get(tier, impl)
    if setup is not None:
        benchmark.pedantic(call, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
    else:
        benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and n_lpis:
        med = stats.stats.median
        benchmark.extra_info["ns_per_lpi"] = med * 1e9 / n_lpis
        benchmark.extra_info["lpis_per_s"] = n_lpis / med if med > 0 else float("inf")
    return out.get("r")
