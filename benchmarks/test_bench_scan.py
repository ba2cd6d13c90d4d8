"""The EnableLPIs 0->1 table scan (``sync_pending_table``; the kernel's ``its_sync_lpi_pending_table``)
of every vCPU of one VM.

Each scan walks *all* LPIs of the VM against one vCPU's table, so scanning every vCPU visits
``n_lpis * n_vcpus`` LPIs; ``n_lpis`` in extra_info counts those visits. Pure Python scans the
first vCPUs only (ns per visit stays comparable). There is no compiled kernel-loop port of the
scan; the NumPy baseline plays that role in the table.
"""

from __future__ import annotations

import pytest
from harness import PYTHON_MAX_LPIS, SCAN_IMPLS, TIERS, get_vm, require_available, run_bench


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("impl", ["engine", "numpy", "python"])
def test_scan_all_vcpus(benchmark, impl, tier):
    require_available(impl)
    scen = get_vm("vm-512", tier)
    mem, pb, lpis, _ = scen.jobs[0]
    n_vcpus = pb.shape[0]
    vcpus = list(range(n_vcpus))
    note = ""
    if impl == "python":
        vcpus = vcpus[: max(1, PYTHON_MAX_LPIS // len(lpis))]
        note = f"pure Python scans {len(vcpus)} of {n_vcpus} vCPUs (ns per visit comparable)"
    f = SCAN_IMPLS[impl]

    def run():
        return [f(mem, pb, lpis, v) for v in vcpus]

    reps = run_bench(
        benchmark, run, scenario="vm-512", op="scan", tier=tier, impl=impl, n_lpis=len(lpis) * len(vcpus), note=note
    )
    assert all(r.guest_writes == 0 for r in reps)
    assert sum(r.lpis_synced for r in reps) > 0
