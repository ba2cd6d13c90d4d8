"""Each path of the run kernel, selected by the plan's layout, agrees with the literal reference.

The run kernel has a strength-reduced loop for arithmetic runs whose INTID stride is a multiple of
8 (constant bit, running pointers) and a general loop; byte-group tracking only when bytes are
shared. These tests build layouts that select each path on purpose, large enough to exceed the
parallel threshold, and compare bytes, counts, dirty pages and pending_latch with the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

import vlpi

pytestmark = pytest.mark.engine

BASE = 0x8000_0000
STRIDE = 1 << 16


def _layout(kind: str, n_vcpus: int = 64, id_bits: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    intid = np.arange(8192, 1 << id_bits, dtype=np.int64)
    target = (intid - 8192) % n_vcpus
    pend = BASE + np.arange(n_vcpus, dtype=np.uint64) * np.uint64(STRIDE)
    if kind == "descending_rows":  # row stride -n_vcpus, INTID stride +n_vcpus
        intid, target = intid[::-1].copy(), target[::-1].copy()
    elif kind == "one_vcpu":  # INTID stride 1: bit varies, general loop
        target = np.zeros_like(intid)
    elif kind == "aliased_tables":  # two vCPUs share each table: shared bytes, byte tracking
        pend = BASE + (np.arange(n_vcpus, dtype=np.uint64) // np.uint64(2)) * np.uint64(STRIDE)
    latch = rng.random(intid.size) < 0.5
    hw = rng.random(intid.size) < 0.5
    vpt_bytes = (1 << id_bits) // 8
    if kind == "narrow_vpt":  # no hw LPI in the top INTIDs, and the VPT stops before them
        top = intid >= (1 << id_bits) - 512
        hw[top] = False
        vpt_bytes = ((1 << id_bits) - 512) // 8
    vpt = rng.integers(0, 256, (n_vcpus, vpt_bytes), dtype=np.uint8)
    mem = vlpi.GuestMemory()
    data = rng.integers(0, 256, STRIDE * n_vcpus, dtype=np.uint8)
    mem.add_slot(BASE, data=data)
    return mem, pend, intid, target, latch & ~hw, hw, vpt


def clone_memory(mem):
    """A copy of ``mem`` with fresh slot arrays (for running the reference beside the engine)."""
    m = vlpi.GuestMemory()
    for s in mem.slots:
        m.add_slot(s.gpa, s.size, readonly=s.readonly, data=s.data.copy())
    return m


KINDS = ["ascending_rows", "descending_rows", "one_vcpu", "aliased_tables", "narrow_vpt"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("order", ["intid", "insertion"])
def test_save_then_restore_match_the_reference(kind, order):
    mem, pend, intid, target, latch, hw, vpt = _layout(kind)
    lpis = vlpi.LPITable(intid, target, latch.copy(), hw.copy())
    mref = clone_memory(mem)
    check_save(mem, mref, pend, intid, target, lpis, latch, hw, vpt, True, order)
    check_restore(mem, mref, pend, intid, target, lpis)


def check_save(mem, mref, pend, intid, target, lpis, latch, hw, vpt, gic41, order):
    """One save by the engine (on ``mem``, ``lpis``) and by the reference (on ``mref``, from the
    plain arrays ``latch``/``hw``): bytes of the first slot, counts and dirty pages agree."""
    want = ref.ref_save(mref, pend, intid, target, latch.copy(), hw.copy(), vpt, gic41, order)
    got = vlpi.save_pending_tables(mem, pend, lpis, vpt=vpt, has_gicv4_1=gic41, order=order)
    assert np.array_equal(mem.slots[0].data, mref.slots[0].data), order
    assert (got.guest_reads, got.guest_writes, got.vpt_reads, got.bytes_changed) == (
        want.guest_reads, want.guest_writes, want.vpt_reads, want.bytes_changed
    ), order
    assert np.array_equal(got.dirty_pages, want.dirty_pages), order


def check_restore(mem, mref, pend, intid, target, lpis):
    """One restore by the engine and by the reference, from the table's current pending_latch:
    bytes, pending_latch, counts and dirty pages agree."""
    lat_ref = np.array(lpis.pending_latch, copy=True)
    want_r = ref.ref_sync_pending_status(mref, pend, intid, target, lat_ref, True)
    got_r = vlpi.sync_pending_status(mem, pend, lpis)
    assert np.array_equal(mem.slots[0].data, mref.slots[0].data)
    assert np.array_equal(lpis.pending_latch.astype(bool), np.asarray(lat_ref).astype(bool))
    assert (got_r.guest_reads, got_r.guest_writes) == (want_r.guest_reads, want_r.guest_writes)
    assert np.array_equal(got_r.dirty_pages, want_r.dirty_pages)
