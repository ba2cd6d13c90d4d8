"""The engine's caches (plans, validated jobs, stacked batches) never serve stale state.

Each test saves once (warming every cache), changes one thing the way a caller can, saves again,
and compares the second save with the literal reference run on an independent copy of the same
state. A cache that missed the change gives different bytes or counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from test_engine_layouts import clone_memory

import vlpi
from vlpi.scenarios import build_vm

pytestmark = pytest.mark.engine


def _save(vm, **kw):
    """One save of ``vm``, through the call its fixture chose: ``save_pending_tables``, or
    ``save_pending_tables_many`` with a two-VM host (the many-VM call caches its job list too)."""
    if vm.call == "one":
        return vlpi.save_pending_tables(vm.mem, vm.pendbaser, vm.lpis, vpt=vm.vpt, **kw)
    other = vm.other
    return vlpi.save_pending_tables_many([(vm.mem, vm.pendbaser, vm.lpis, vm.vpt), other.job], **kw)[0]


def _check_save(vm, *, has_gicv4_1=True, order="intid"):
    """Save with the engine (caches warm) and compare with the reference on a copy."""
    mem2 = clone_memory(vm.mem)
    lp = vm.lpis
    expect = ref.ref_save(
        mem2, vm.pendbaser, lp.intid, lp.target_vcpu, lp.pending_latch.copy(), lp.hw.copy(),
        vm.vpt, has_gicv4_1, order,
    )
    rep = _save(vm, has_gicv4_1=has_gicv4_1, order=order)
    for a, b in zip(vm.mem.slots, mem2.slots, strict=True):
        assert np.array_equal(a.data, b.data), "guest bytes differ from the reference"
    assert (rep.guest_reads, rep.guest_writes, rep.vpt_reads, rep.bytes_changed) == (
        expect.guest_reads, expect.guest_writes, expect.vpt_reads, expect.bytes_changed
    )
    assert np.array_equal(rep.dirty_pages, expect.dirty_pages)
    return rep


@pytest.fixture(params=["one", "many"])
def vm(request):
    v = build_vm(vcpus=4, id_bits=14, gic="v4.1", seed=7)
    v.call = request.param
    v.other = build_vm(vcpus=2, id_bits=14, gic="v4.1", seed=8)  # the second VM of a "many" call
    for _ in range(2):  # warm every cache (the many-VM call caches its job list on its first call)
        _save(v, has_gicv4_1=True)
    v.randomize(np.random.default_rng(1))
    return v


def test_pendbaser_changed_in_place(vm):
    vm.pendbaser[[0, 1]] = vm.pendbaser[[1, 0]]  # swap two vCPUs' tables, same array object
    _check_save(vm)


def test_pendbaser_new_array_same_values_and_junk_bits(vm):
    vm.pendbaser = vm.pendbaser.copy() | np.uint64(0xF000_0000_0000_0FFF)  # non-address bits only
    _check_save(vm)


def test_pending_latch_replaced_and_changed_in_place(vm):
    vm.lpis.pending_latch = ~vm.lpis.pending_latch.astype(bool)
    _check_save(vm)
    vm.lpis.pending_latch[:] = True
    _check_save(vm)


def test_hw_changed_in_place(vm):
    vm.lpis.hw[:] = ~vm.lpis.hw.astype(bool)
    _check_save(vm)


def test_targets_changed(vm):
    n = len(vm.lpis)
    vm.lpis.set_targets(np.arange(0, n, 3), 3)
    vm.lpis.set_targets(np.arange(1, n, 5), -1)
    _check_save(vm)


def test_vpt_replaced_and_changed_in_place(vm):
    vm.vpt = vm.vpt.copy()
    vm.vpt[:] = 0xFF
    _check_save(vm)
    vm.vpt[:] = 0
    _check_save(vm)


def test_memory_slot_added_and_data_moved(vm):
    # replace the table slot by one backed by a fresh array at the same GPA
    s = vm.mem.slots[0]
    data = s.data.copy()
    vm.mem.remove_slot(s.gpa)
    vm.mem.add_slot(s.gpa, data=data)
    vm.mem.add_slot(0x1000, 0x1000)
    _check_save(vm)


def test_narrow_vpt_rechecks_hw_every_call(vm):
    """With a VPT narrower than the INTID space, making a high LPI hw must be caught again."""
    lp = vm.lpis
    high = int(np.argmax(lp.intid))
    lp.hw[:] = False
    vm.vpt = np.zeros((vm.pendbaser.size, int(lp.intid[high]) >> 3), np.uint8)  # too narrow for `high`
    _save(vm, has_gicv4_1=True)
    _save(vm, has_gicv4_1=True)
    lp.hw[high] = True
    with pytest.raises(ValueError, match=rf"vpt is too narrow: lpis.hw\[{high}\]"):
        _save(vm, has_gicv4_1=True)


def test_missing_vpt_rechecks_hw_every_call(vm):
    lp = vm.lpis
    lp.hw[:] = False
    vm.vpt = None
    _save(vm, has_gicv4_1=True)
    _save(vm, has_gicv4_1=True)
    lp.hw[5] = True
    with pytest.raises(ValueError, match=r"vpt is required .* lpis.hw\[5\]"):
        _save(vm, has_gicv4_1=True)


def test_order_and_gic_flags_switch(vm):
    _check_save(vm, order="insertion")
    vm.randomize(np.random.default_rng(2))
    _check_save(vm, has_gicv4_1=False)
    vm.randomize(np.random.default_rng(3))
    _check_save(vm)


def test_save_many_with_changing_job_lists():
    """The stacked batch of a previous call must not be reused for another job list."""
    vms = [build_vm(vcpus=3, id_bits=14, gic="v4.1", seed=s) for s in range(4)]
    jobs = [v.job for v in vms]
    vlpi.save_pending_tables_many(jobs, has_gicv4_1=True)
    for sub in (jobs[::-1], jobs[1:3], jobs[:1], jobs):
        sel = [vms[jobs.index(j)] for j in sub]
        for v in sel:
            v.randomize(np.random.default_rng(len(sub)))
        clones = [(clone_memory(v.mem), v) for v in sel]
        expect = [
            ref.ref_save(m, v.pendbaser, v.lpis.intid, v.lpis.target_vcpu, v.lpis.pending_latch.copy(),
                         v.lpis.hw.copy(), v.vpt, True, "intid")
            for m, v in clones
        ]
        reps = vlpi.save_pending_tables_many(sub, has_gicv4_1=True)
        for (m, v), e, r in zip(clones, expect, reps, strict=True):
            assert np.array_equal(v.mem.slots[0].data, m.slots[0].data)
            assert (r.guest_writes, r.vpt_reads) == (e.guest_writes, e.vpt_reads)


def test_restore_after_save_uses_current_state(vm):
    _check_save(vm)
    mem2 = clone_memory(vm.mem)
    lat2 = vm.lpis.pending_latch.copy()
    e = ref.ref_sync_pending_status(mem2, vm.pendbaser, vm.lpis.intid, vm.lpis.target_vcpu, lat2, True)
    r = vlpi.sync_pending_status(vm.mem, vm.pendbaser, vm.lpis)
    assert np.array_equal(vm.mem.slots[0].data, mem2.slots[0].data)
    assert np.array_equal(vm.lpis.pending_latch.astype(bool), lat2.astype(bool))
    assert (r.guest_reads, r.guest_writes) == (e.guest_reads, e.guest_writes)


def test_slot_dirty_bitmaps_are_current_after_an_engine_save(vm):
    """The engine logs dirty pages lazily; reading mem.slots must show them."""
    vm.mem.clear_dirty()
    rep = _check_save(vm)
    s = vm.mem.slots[0]
    assert rep.dirty_pages.size > 0
    assert np.array_equal(np.flatnonzero(s.dirty) + s.page0, rep.dirty_pages)
