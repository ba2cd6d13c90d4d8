"""Live migration end to end (:func:`vlpi.migration.migrate_host`) of host-4096 built as VMs.

* ``migrate`` -- both sides, excluding the RAM copy: pause, pending sets, ``SAVE_TABLES`` per VM,
  one ``SAVE_PENDING_TABLES`` pass for the host, registers and images; the destination's RAM
  load, redistributors, ITS registers, ``RESTORE_TABLES``, forwarding, and verification. A fresh
  host per round (its build is not timed). Target for the big tier: <= 5 s.
* ``snapshot`` -- writing and reading back (checked) the snapshot of a migrated host, in memory.

CI tier: 4 VMs x 16 vCPUs, IDbits 14; big (``--big``): 64 VMs x 64 vCPUs, IDbits 16 (3,670,016 LPIs).
"""

from __future__ import annotations

import pytest
from harness import run_bench

from vlpi import migration as M
from vlpi import snapshot as S
from vlpi.scenarios import build_model_host

SIZES = {"ci": dict(vms=4, vcpus=16, id_bits=14), "big": dict(vms=64, vcpus=64, id_bits=16)}
TIERS = ["ci", pytest.param("big", marks=pytest.mark.big)]


@pytest.mark.parametrize("tier", TIERS)
def test_migrate_host(benchmark, tier):
    state = {}

    def setup():
        state["vms"] = build_model_host(**SIZES[tier], gic="v4.1", seed=0)

    setup()
    n = sum(len(vm.lpis) for vm in state["vms"])
    out = run_bench(
        benchmark,
        lambda: M.migrate_host(state["vms"]),
        scenario="host-4096 VMs",
        op="migrate",
        tier=tier,
        impl="engine",
        n_lpis=n,
        setup=setup,
        rounds=3 if tier == "big" else None,
        note="both sides, verification included, RAM copy excluded",
    )
    _, rep = out
    assert rep.ok and rep.lost_in_window.size == 0


@pytest.mark.parametrize("tier", TIERS)
def test_snapshot_write_read(benchmark, tier):
    vms = build_model_host(**SIZES[tier], gic="v4.1", seed=0)
    snap = M.save_host(vms).snapshot
    n = sum(len(vm.lpis) for vm in vms)
    out = run_bench(
        benchmark,
        lambda: S.from_bytes(S.to_bytes(snap)),
        scenario="host-4096 VMs",
        op="snapshot",
        tier=tier,
        impl="engine",
        n_lpis=n,
        note="to_bytes + from_bytes (seal, digests)",
    )
    assert len(out.vms) == len(vms)
