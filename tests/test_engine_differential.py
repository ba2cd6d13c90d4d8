"""Differential tests: the engine against the literal reference on thousands of nasty scenarios.

Every comparison goes through :func:`oracle.assert_engine_matches` (bytes of every slot, dirty
log, every report count, pending_latch, fault details, untouched inputs). Seeded loops give a
fixed, broad sample in every run; hypothesis explores the knob space (bounded ``max_examples``).

Longer hunting runs: ``VLPI_DIFF_SCALE=20`` multiplies the seeded sample and the hypothesis
examples by 20.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import Scenario, SlotSpec, assert_engine_matches, assert_large_matches, assert_save_many_matches
from reference import pendbase, ref_save
from strategies import LARGE_SHAPES, gen_large_scenario, gen_scenario, scenarios

import vlpi

pytestmark = pytest.mark.engine

SAVE_MODES = list(itertools.product(("intid", "insertion"), (True, False), (False, True)))
#: multiply the seeded sample and hypothesis examples (VLPI_DIFF_SCALE=20 for a long hunting run)
SCALE = max(1, int(os.environ.get("VLPI_DIFF_SCALE", "1")))


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(list(key))


# ------------------------------------------------------------------------------- save
@pytest.mark.parametrize("chunk", range(4))
def test_save_seeded(chunk):
    """300 scenarios per chunk, each under all 8 (order, atomic, has_gicv4_1) modes."""
    faults = 0
    for seed in range(chunk * 300 * SCALE, (chunk + 1) * 300 * SCALE):
        scn = gen_scenario(_rng(1, seed))
        for order, atomic, v41 in SAVE_MODES:
            r, _ = assert_engine_matches("save", scn, order=order, atomic=atomic, has_gicv4_1=v41)
            faults += r.fault is not None
    assert faults > 0  # the sample exercises the fault paths


@pytest.mark.parametrize("order", ["intid", "insertion"])
@pytest.mark.parametrize("atomic", [True, False])
@pytest.mark.parametrize("v41", [False, True])
@settings(max_examples=40 * SCALE)
@given(scn=scenarios())
def test_save_hypothesis(scn, order, atomic, v41):
    assert_engine_matches("save", scn, order=order, atomic=atomic, has_gicv4_1=v41)


@pytest.mark.parametrize("layout", ["adjacent", "aliased"])
def test_save_aliasing_heavy(layout):
    """Bit aliases (out-of-range INTIDs landing in the next table, shared PENDBASERs): the
    last writer in walk order wins, which differs between the two orders."""
    for seed in range(150):
        scn = gen_scenario(_rng(2, seed), layout=layout, intid_kind="shifted" if seed % 2 else "packed",
                           clean=seed % 3 != 0)
        for order in ("intid", "insertion"):
            assert_engine_matches("save", scn, order=order, atomic=False, has_gicv4_1=bool(seed % 2))


def _has_bit_alias(scn: Scenario) -> bool:
    """Two targeted LPIs on the same (GPA, bit)."""
    keys = touched_bits(scn)
    return len(keys) != len(set(keys))


def touched_bits(scn: Scenario) -> list:
    return [
        (pendbase(int(scn.pendbaser[t])) + int(i) // 8, int(i) % 8)
        for i, t in zip(scn.intid, scn.target_vcpu, strict=True)
        if t >= 0
    ]


def test_second_save_changes_nothing():
    """Right after a save, a second save changes no byte; it writes nothing at all unless two
    LPIs alias one bit with different wanted states (then the kernel re-writes that bit back
    and forth on every save: bytes unchanged, pages dirtied)."""
    aliased = 0
    for seed in range(200):
        scn = gen_scenario(_rng(3, seed), clean=True)
        for order, v41 in itertools.product(("intid", "insertion"), (False, True)):
            mem, pend, lpis, vpt = scn.build()
            try:
                vlpi.save_pending_tables(mem, pend, lpis, vpt=vpt, order=order, has_gicv4_1=v41)
            except vlpi.GuestMemoryFault:
                continue  # "top" layout: GPAs beyond 2**52 fault even in clean scenarios
            before = [s.data.copy() for s in mem.slots]
            mem.clear_dirty()
            rep = vlpi.save_pending_tables(mem, pend, lpis, vpt=vpt, order=order, has_gicv4_1=v41)
            assert rep.bytes_changed == 0
            assert all(np.array_equal(a, s.data) for a, s in zip(before, mem.slots, strict=True))
            if _has_bit_alias(scn):
                aliased += 1
            else:
                assert rep.guest_writes == 0 and len(rep.dirty_pages) == 0
                assert mem.dirty_pages().size == 0
            # and the second save is itself what the reference does on the saved image
            assert_engine_matches("save", Scenario.from_objects(mem, pend, lpis, vpt), order=order,
                                  has_gicv4_1=v41)
    assert aliased < 200 * 4


def test_engine_reuses_cached_plans_correctly():
    """One live LPITable and GuestMemory saved/restored repeatedly while latches, hw flags,
    VPTs, targets (set_targets), PENDBASERs and memslots change: the engine's caches (plans on
    the LPITable keyed on PENDBASER, coverage keyed on the memory generation) must never serve
    stale results. Each step compares the engine on the live objects with the reference."""
    rng = _rng(4)
    for seed in range(40):
        scn = gen_scenario(_rng(4, seed), max_lpis=120)
        mem, pend, lpis, vpt = scn.build()
        for step in range(8):
            cur = Scenario.from_objects(mem, pend, lpis, vpt, name=f"seed {seed} step {step}")
            if step == 5:
                assert_engine_matches("sync_pending_status", cur, live=(mem, pend, lpis, vpt), atomic=False)
            elif step == 6:
                assert_engine_matches("sync_pending_table", cur, live=(mem, pend, lpis, vpt), vcpu=0)
            else:
                kw = dict(order=("intid", "insertion")[step % 2], atomic=bool(step % 3), has_gicv4_1=True)
                assert_engine_matches("save", cur, live=(mem, pend, lpis, vpt), **kw)
            lpis.pending_latch[:] = rng.random(len(lpis)) < 0.5
            if vpt is not None:
                vpt ^= rng.integers(0, 256, vpt.shape, dtype=np.uint8)
            if step == 1:
                lpis.hw = np.zeros(len(lpis), bool)  # replaced array
            if step == 2 and len(pend) > 1:
                pend = np.roll(pend, 1)  # same LPIs, permuted PENDBASERs
            if step == 3 and mem.slots:
                mem.remove_slot(mem.slots[-1].gpa)  # memory generation changes
            if step in (4, 6) and len(lpis):
                k = rng.choice(len(lpis), max(1, len(lpis) // 3), replace=False)
                lpis.set_targets(k, rng.integers(-1, len(pend), k.size))  # MOVI/MAPC: plan invalidated


# ------------------------------------------------------------------------ save_many
def test_save_many_matches_one_call_per_vm():
    for batch in range(60):
        rng = _rng(5, batch)
        scns = []
        while len(scns) < int(rng.integers(1, 6)):
            s = gen_scenario(rng, clean=True, max_lpis=80)
            m = s.memory()
            if ref_save(m, s.pendbaser, s.intid, s.target_vcpu, s.pending_latch, s.hw, s.vpt, True).fault is None:
                scns.append(s)
        for order, atomic, v41 in SAVE_MODES:
            assert_save_many_matches(scns, order=order, atomic=atomic, has_gicv4_1=v41)


@pytest.mark.parametrize("atomic", [True, False])
def test_save_many_with_a_faulting_vm(atomic):
    """atomic: nothing written in any VM. kernel-exact: VMs before the faulting one saved,
    the faulting one partially (as the reference), later ones untouched."""
    hits = 0
    for batch in range(80):
        rng = _rng(6, batch)
        scns = [gen_scenario(rng, max_lpis=60) for _ in range(int(rng.integers(2, 5)))]
        refs = []
        for s in scns:
            m = s.memory()
            r = ref_save(m, s.pendbaser, s.intid, s.target_vcpu, s.pending_latch, s.hw, s.vpt, False, "intid")
            refs.append((r, [x.data.copy() for x in m.slots]))
        bad = next((j for j, (r, _) in enumerate(refs) if r.fault is not None), None)
        if bad is None:
            continue
        hits += 1
        built = [s.build() for s in scns]
        with pytest.raises(vlpi.GuestMemoryFault) as ei:
            vlpi.save_pending_tables_many([b for b in built], order="intid", atomic=atomic)
        e, f = ei.value, refs[bad][0].fault
        assert (e.gpa, e.intid, e.vcpu, e.write) == (f.gpa, f.intid, f.vcpu, f.write)
        assert getattr(e, "job", bad) == bad
        for j, (s, (m, _, lp, _)) in enumerate(zip(scns, built, strict=True)):
            assert np.array_equal(np.asarray(lp.pending_latch, dtype=bool), s.pending_latch)
            final = [x.data for x in m.slots]
            if atomic or j > bad:
                expect = [x.data for x in sorted(s.slots, key=lambda x: x.gpa)]
            else:
                expect = refs[j][1]
            assert all(np.array_equal(a, b) for a, b in zip(expect, final, strict=True)), f"job {j} (bad={bad})"
            if atomic or j > bad:
                init = s.memory().dirty_pages()
                assert np.array_equal(m.dirty_pages(), init), f"job {j}: dirty log changed"
        if not atomic:
            # the faulting VM's report is the reference's partial walk; earlier VMs' reports too
            r = refs[bad][0]
            got = (e.report.guest_reads, e.report.guest_writes, e.report.bytes_changed, e.report.lpis_skipped)
            assert got == (r.guest_reads, r.guest_writes, r.bytes_changed, r.lpis_skipped)
            assert list(e.report.dirty_pages) == r.dirty_pages.tolist()
            if hasattr(e, "reports"):
                assert len(e.reports) == bad
                for j, rep in enumerate(e.reports):
                    rj = refs[j][0]
                    assert (rep.guest_reads, rep.guest_writes, rep.bytes_changed) == (
                        rj.guest_reads, rj.guest_writes, rj.bytes_changed)
    assert hits > 10


# ---------------------------------------------------------------- sync_pending_status
@pytest.mark.parametrize("chunk", range(2))
def test_sync_status_seeded(chunk):
    for seed in range(chunk * 400 * SCALE, (chunk + 1) * 400 * SCALE):
        scn = gen_scenario(_rng(7, seed))
        for atomic, stop in itertools.product((True, False), (True, False)):
            assert_engine_matches("sync_pending_status", scn, atomic=atomic, stop_on_error=stop)


@pytest.mark.parametrize("atomic", [True, False])
@pytest.mark.parametrize("stop", [True, False])
@settings(max_examples=40 * SCALE)
@given(scn=scenarios())
def test_sync_status_hypothesis(scn, atomic, stop):
    assert_engine_matches("sync_pending_status", scn, atomic=atomic, stop_on_error=stop)


def test_restore_after_save_round_trip():
    """save on the source, restore (sync_pending_status) on fresh tables over the saved image:
    every targeted LPI whose bit is its own (no alias) gets its saved state back and the image
    ends with those bits consumed; all as the reference says."""
    for seed in range(150):
        scn = gen_scenario(_rng(8, seed), clean=True, p_hw=0.0)
        mem, pend, lpis, vpt = scn.build()
        try:
            vlpi.save_pending_tables(mem, pend, lpis)
        except vlpi.GuestMemoryFault:
            continue
        fresh = Scenario.from_objects(mem, pend, lpis)
        fresh.pending_latch = np.zeros(scn.n_lpis, dtype=bool)
        assert_engine_matches("sync_pending_status", fresh, atomic=False)


# ----------------------------------------------------------------- sync_pending_table
@pytest.mark.parametrize("chunk", range(2))
def test_sync_table_seeded(chunk):
    for seed in range(chunk * 300 * SCALE, (chunk + 1) * 300 * SCALE):
        scn = gen_scenario(_rng(9, seed))
        for vcpu in sorted({0, scn.n_vcpus - 1}):
            for atomic in (True, False):
                assert_engine_matches("sync_pending_table", scn, vcpu=vcpu, atomic=atomic)


@settings(max_examples=60 * SCALE)
@given(scn=scenarios(), data=st.data())
def test_sync_table_hypothesis(scn, data):
    vcpu = data.draw(st.integers(0, scn.n_vcpus - 1), label="vcpu")
    atomic = data.draw(st.booleans(), label="atomic")
    assert_engine_matches("sync_pending_table", scn, vcpu=vcpu, atomic=atomic)


# ------------------------------------------------------------------- large tables
@pytest.mark.parametrize("shape", LARGE_SHAPES)
def test_large_tables(shape):
    """Tens of thousands of LPIs: run compression, several parallel work units, write-back
    queues, tables over several slots, a fault late in the walk."""
    assert_large_matches(gen_large_scenario(_rng(10, LARGE_SHAPES.index(shape)), 50_000, shape), shape)


# ------------------------------------------------------------------ dtype variants
def test_uint8_flag_arrays():
    """pending_latch/hw given as uint8 0/1 arrays (used in place by LPITable)."""
    for seed in range(150):
        scn = gen_scenario(_rng(11, seed))
        scn.flag_dtype = np.uint8
        assert scn.lpis().pending_latch.dtype == np.uint8
        order = ("intid", "insertion")[seed % 3 == 0]
        assert_engine_matches("save", scn, atomic=bool(seed % 2), has_gicv4_1=True, order=order)
        assert_engine_matches("sync_pending_status", scn, atomic=bool(seed % 2), stop_on_error=seed % 4 != 0)
        assert_engine_matches("sync_pending_table", scn, vcpu=0, atomic=bool(seed % 2))


def test_int32_targets_many_vcpus():
    """More than 32767 vCPUs: LPITable stores target_vcpu as int32. Most vCPUs share one
    PENDBASER (aliasing), a few have their own."""
    n_vcpus = 40_000
    for seed in range(6):
        rng = _rng(12, seed)
        base = 0x1_0000_0000
        pend = np.full(n_vcpus, base, dtype=np.uint64)
        own = rng.choice(n_vcpus, 5, replace=False)
        pend[own] = base + (1 + np.arange(5, dtype=np.uint64)) * np.uint64(0x10000)
        n = 3000
        intid = 8192 + rng.choice(8 * 4000, n, replace=False)
        target = rng.choice(np.concatenate([own, rng.integers(32767, n_vcpus, 20), [-1, 0]]), n)
        scn = Scenario([SlotSpec(base, (rng.random(6 * 0x10000) < 0.3).astype(np.uint8) * np.uint8(0xFF))],
                       pend, intid.astype(np.int64), target.astype(np.int64), rng.random(n) < 0.5,
                       np.zeros(n, bool), name=f"int32 targets {seed}")
        assert scn.lpis().target_vcpu.dtype == np.int32
        for order, atomic in itertools.product(("intid", "insertion"), (True, False)):
            assert_engine_matches("save", scn, order=order, atomic=atomic)
        assert_engine_matches("sync_pending_status", scn, atomic=False)
        assert_engine_matches("sync_pending_table", scn, vcpu=int(own[0]))


@settings(max_examples=30 * SCALE)
@given(scns=st.lists(scenarios(max_lpis=32), min_size=1, max_size=4), order=st.sampled_from(["intid", "insertion"]),
       v41=st.booleans())
def test_save_many_hypothesis(scns, order, v41):
    """Fault-free batches only (faulting batches: test_save_many_with_a_faulting_vm)."""
    ok = []
    for s in scns:
        m = s.memory()
        if ref_save(m, s.pendbaser, s.intid, s.target_vcpu, s.pending_latch, s.hw, s.vpt, v41, order).fault is None:
            ok.append(s)
    if ok:
        assert_save_many_matches(ok, order=order, has_gicv4_1=v41, atomic=True)


# ------------------------------------------------------- parallel kernels, tiny work units
def test_parallel_kernels_with_tiny_units(tiny_units):
    for seed in range(200):
        scn = gen_scenario(_rng(13, seed), max_lpis=120)
        for order, atomic, v41 in SAVE_MODES[seed % 4 :: 4]:
            assert_engine_matches("save", scn, order=order, atomic=atomic, has_gicv4_1=v41)
        assert_engine_matches("sync_pending_status", scn, atomic=bool(seed % 2))
    for shape in ("stress_rr", "shuffled", "two_slots"):
        scn = gen_large_scenario(_rng(13, 1000 + LARGE_SHAPES.index(shape)), 3000, shape)
        assert_engine_matches("save", scn, has_gicv4_1=True)
        assert_engine_matches("sync_pending_status", scn)


def test_parallel_save_many_with_tiny_units(tiny_units):
    for batch in range(30):
        rng = _rng(14, batch)
        scns = []
        while len(scns) < int(rng.integers(2, 6)):
            s = gen_scenario(rng, clean=True, max_lpis=80)
            if ref_save(s.memory(), s.pendbaser, s.intid, s.target_vcpu, s.pending_latch, s.hw, s.vpt,
                        True).fault is None:
                scns.append(s)
        for order, v41 in itertools.product(("intid", "insertion"), (False, True)):
            assert_save_many_matches(scns, order=order, atomic=True, has_gicv4_1=v41)


# ------------------------------------------------------------------- stateful chains
def test_random_operation_chains_on_live_objects():
    """Random sequences of save / restore / EnableLPIs scan / MOVI / latch changes on ONE live
    GuestMemory + LPITable (state and engine caches carried from call to call), each step
    compared with the reference on a snapshot."""
    for seed in range(60):
        rng = _rng(15, seed)
        scn = gen_scenario(rng, max_lpis=80)
        mem, pend, lpis, vpt = scn.build()
        for step in range(10):
            cur = Scenario.from_objects(mem, pend, lpis, vpt, name=f"chain seed {seed} step {step}")
            live = (mem, pend, lpis, vpt)
            op = int(rng.integers(0, 5))
            if op == 0 or op == 1:
                order, atomic, v41 = SAVE_MODES[int(rng.integers(0, len(SAVE_MODES)))]
                assert_engine_matches("save", cur, live=live, order=order, atomic=atomic, has_gicv4_1=v41)
            elif op == 2:
                assert_engine_matches("sync_pending_status", cur, live=live, atomic=bool(rng.integers(0, 2)),
                                      stop_on_error=bool(rng.integers(0, 2)))
            elif op == 3:
                assert_engine_matches("sync_pending_table", cur, live=live, vcpu=int(rng.integers(0, len(pend))),
                                      atomic=bool(rng.integers(0, 2)))
            else:
                k = rng.choice(len(lpis), max(1, len(lpis) // 4), replace=False)
                lpis.set_targets(k, rng.integers(-1, len(pend), k.size))
                lpis.pending_latch[rng.random(len(lpis)) < 0.3] ^= True
            if rng.random() < 0.3:
                mem.clear_dirty()
