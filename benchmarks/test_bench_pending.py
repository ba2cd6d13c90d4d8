"""Save, restore and re-save of pending tables: the engine against its baselines.

Groups (one per scenario, op and tier, so engine and baselines line up in the table):

* ``save host-4096``  -- host evacuation: ``save_pending_tables_many`` over every VM (``engine_many``;
  ``engine_many_packed`` on packed LPI tables, flags held as bits), the engine one VM at a time
  (``engine``), and per-VM baselines (kernel loop compiled by numba,
  the kernel loop in plain C, NumPy, bitarray, pure Python). Every round starts from identical,
  freshly randomised tables (about half the bits change).
* ``resave host-4096`` -- the same save again with nothing changed (reads only).
* ``restore host-4096`` -- ``sync_pending_status`` per VM from freshly randomised tables (``engine``;
  ``engine_packed`` on packed tables).
* ``save``/``restore`` of ``vm-512`` (one VM, 512 vCPUs), ``sparse`` (IDbits 20, 1024 LPIs per
  vCPU) and ``dense`` (one vCPU owning every INTID).
"""

from __future__ import annotations

import pytest
from harness import (
    PYTHON_MAX_LPIS,
    RESTORE_IMPLS,
    SAVE_IMPLS,
    TIERS,
    get_host,
    get_vm,
    packed_impl,
    require_available,
    run_bench,
)

RANDOMIZE_SEED = 12345  # every round of every implementation sees the same tables


def _scenario(name: str, tier: str, impl: str = ""):
    return get_host(tier, packed_impl(impl)) if name == "host-4096" else get_vm(name, tier)


def _jobs_for(impl: str, scen):
    """The jobs an implementation runs on: pure Python runs on the first VMs only at full size."""
    jobs = scen.jobs
    if impl != "python":
        return jobs, ""
    out, n = [], 0
    for j in jobs:
        if out and n + len(j[2]) > PYTHON_MAX_LPIS:
            break
        out.append(j)
        n += len(j[2])
    note = "" if len(out) == len(jobs) else f"pure Python on {len(out)} of {len(jobs)} VMs (ns/LPI comparable)"
    return out, note


def _n(jobs) -> int:
    return sum(len(j[2]) for j in jobs)


SAVE_HOST = [
    "engine_many", "engine_many_packed", "engine", "kernel_loop", "c_kernel_loop", "numpy", "bitarray", "python",
]
SAVE_VM = ["engine", "kernel_loop", "c_kernel_loop", "numpy", "bitarray", "python"]
RESTORE = ["engine", "kernel_loop", "c_kernel_loop", "numpy", "python"]
RESTORE_HOST = ["engine", "engine_packed", "kernel_loop", "c_kernel_loop", "numpy", "python"]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", SAVE_HOST)
def test_save_host(benchmark, impl, tier):
    require_available(impl)
    scen = _scenario("host-4096", tier, impl)
    jobs, note = _jobs_for(impl, scen)
    f = SAVE_IMPLS[impl]
    reps = run_bench(
        benchmark,
        lambda: f(jobs, scen.has_gicv4_1),
        scenario="host-4096",
        op="save",
        tier=tier,
        impl=impl,
        n_lpis=_n(jobs),
        setup=lambda: scen.randomize(RANDOMIZE_SEED),
        note=note,
    )
    assert len(reps) == len(jobs)
    assert sum(r.guest_writes for r in reps) > _n(jobs) // 8  # about half the bits changed


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", SAVE_HOST)
def test_resave_host_nothing_changed(benchmark, impl, tier):
    require_available(impl)
    scen = _scenario("host-4096", tier, impl)
    jobs, note = _jobs_for(impl, scen)
    f = SAVE_IMPLS[impl]

    def setup():
        scen.randomize(RANDOMIZE_SEED)
        SAVE_IMPLS["numpy"](scen.jobs, scen.has_gicv4_1)  # tables now hold exactly the state

    setup()
    reps = run_bench(
        benchmark,
        lambda: f(jobs, scen.has_gicv4_1),
        scenario="host-4096",
        op="resave",
        tier=tier,
        impl=impl,
        n_lpis=_n(jobs),
        note=note,
    )
    assert sum(r.guest_writes for r in reps) == 0
    assert sum(r.guest_reads for r in reps) > 0


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", RESTORE_HOST)
def test_restore_host(benchmark, impl, tier):
    require_available(impl)
    scen = _scenario("host-4096", tier, impl)
    jobs, note = _jobs_for(impl, scen)
    f = RESTORE_IMPLS[impl]
    reps = run_bench(
        benchmark,
        lambda: f(jobs),
        scenario="host-4096",
        op="restore",
        tier=tier,
        impl=impl,
        n_lpis=_n(jobs),
        setup=lambda: scen.randomize(RANDOMIZE_SEED),
        note=note,
    )
    assert sum(r.guest_writes for r in reps) > _n(jobs) // 8


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", SAVE_VM)
@pytest.mark.parametrize("scenario", ["vm-512", "sparse", "dense"])
def test_save_vm(benchmark, scenario, impl, tier):
    require_available(impl)
    scen = _scenario(scenario, tier)
    jobs = scen.jobs
    f = SAVE_IMPLS[impl]
    reps = run_bench(
        benchmark,
        lambda: f(jobs, scen.has_gicv4_1),
        scenario=scenario,
        op="save",
        tier=tier,
        impl=impl,
        n_lpis=_n(jobs),
        setup=lambda: scen.randomize(RANDOMIZE_SEED),
    )
    assert reps[0].guest_writes > _n(jobs) // 8


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", RESTORE)
@pytest.mark.parametrize("scenario", ["vm-512", "sparse"])
def test_restore_vm(benchmark, scenario, impl, tier):
    require_available(impl)
    scen = _scenario(scenario, tier)
    jobs = scen.jobs
    f = RESTORE_IMPLS[impl]
    reps = run_bench(
        benchmark,
        lambda: f(jobs),
        scenario=scenario,
        op="restore",
        tier=tier,
        impl=impl,
        n_lpis=_n(jobs),
        setup=lambda: scen.randomize(RANDOMIZE_SEED),
    )
    assert reps[0].guest_writes > _n(jobs) // 8
