"""Packed LPI tables (``LPITable(..., packed=True)``): flags held as bits, read and written by the
engine in place of bytes.

The engine takes different code paths for a packed table: its rows point at the table's own bits
(nothing is packed per call), a restore writes latch bits (one bit, a 64-bit word lane, or a
64-bit window at a time), and the sequential and scan paths work on a byte copy that is packed
back. Every case here is compared with the literal reference (bytes, dirty log, every count,
pending_latch, fault details) through the same oracle as the byte tables, plus the table's own
API: read-only copies, setters, ``set_flags``, ``nbytes``.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import replace

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import Scenario, assert_engine_matches, assert_large_matches, assert_save_many_matches
from strategies import LARGE_SHAPES, gen_large_scenario, gen_scenario, scenarios
from test_engine_layouts import clone_memory
from test_engine_words import _layout

import vlpi

pytestmark = pytest.mark.engine

SAVE_MODES = list(itertools.product(("intid", "insertion"), (True, False), (False, True)))


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng([99, *key])


def _packed(scn: Scenario) -> Scenario:
    return replace(scn, packed=True)


# ------------------------------------------------------------------ the reference, seeded
@pytest.mark.parametrize("chunk", range(2))
def test_packed_save_seeded(chunk):
    faults = 0
    for seed in range(chunk * 150, (chunk + 1) * 150):
        scn = _packed(gen_scenario(_rng(1, seed)))
        assert scn.lpis().packed
        for order, atomic, v41 in SAVE_MODES:
            r, _ = assert_engine_matches("save", scn, order=order, atomic=atomic, has_gicv4_1=v41)
            faults += r.fault is not None
    assert faults > 0  # the fault paths (the sequential save on a byte copy) ran


def test_packed_restore_and_scan_seeded():
    faults = 0
    for seed in range(300):
        scn = _packed(gen_scenario(_rng(2, seed)))
        for atomic, stop in itertools.product((True, False), (True, False)):
            r, _ = assert_engine_matches("sync_pending_status", scn, atomic=atomic, stop_on_error=stop)
            faults += r.fault is not None
        for vcpu in sorted({0, scn.n_vcpus - 1}):
            assert_engine_matches("sync_pending_table", scn, vcpu=vcpu, atomic=bool(seed % 2))
    assert faults > 0  # partial restores (latch bits packed back after a fault) ran


@settings(max_examples=40)
@given(scn=scenarios(), data=st.data())
def test_packed_hypothesis(scn, data):
    scn = _packed(scn)
    order, atomic, v41 = data.draw(st.sampled_from(SAVE_MODES), label="save mode")
    assert_engine_matches("save", scn, order=order, atomic=atomic, has_gicv4_1=v41)
    assert_engine_matches("sync_pending_status", scn, atomic=data.draw(st.booleans(), label="atomic"),
                          stop_on_error=data.draw(st.booleans(), label="stop_on_error"))
    vcpu = data.draw(st.integers(0, scn.n_vcpus - 1), label="vcpu")
    assert_engine_matches("sync_pending_table", scn, vcpu=vcpu, atomic=data.draw(st.booleans(), label="scan atomic"))


@pytest.mark.parametrize("shape", LARGE_SHAPES)
def test_packed_large_tables(shape):
    """Tens of thousands of LPIs: several work units, runs over two slots (the byte-merging
    kernel), a late fault."""
    assert_large_matches(_packed(gen_large_scenario(_rng(3, LARGE_SHAPES.index(shape)), 50_000, shape)), shape)


# ------------------------------------------------------------------ the word paths
# (every word-path layout, byte and packed: test_engine_words.test_word_paths_match_the_reference)


def test_packed_restore_keeps_the_latch_of_untargeted_rows_and_the_pad_bits():
    """Rows without a target keep their latch; the bits after the last row stay zero (the save's
    64-bit windows read them)."""
    mem, pend, intid, target, latch, hw, vpt = _layout("dense")
    target = target.copy()
    target[::7] = -1
    lpis = vlpi.LPITable(intid, target, np.ones(intid.size, bool), hw, packed=True)
    vlpi.sync_pending_status(mem, pend, lpis)
    got = lpis.pending_latch
    assert got[::7].all()
    words = lpis.flag_words
    n = len(lpis)
    nbw = words.size // 2
    tail = np.unpackbits(words[:nbw].view(np.uint8), bitorder="little")[n:]
    assert not tail.any()


# ------------------------------------------------------------------ many VMs, parallel units
def test_save_many_mixes_packed_and_byte_tables():
    """One batch holds packed tables and byte tables: each row packs (or not) as its table needs."""
    for batch in range(20):
        rng = _rng(4, batch)
        scns = []
        while len(scns) < 4:
            s = gen_scenario(rng, clean=True, max_lpis=80)
            if ref.ref_save(s.memory(), s.pendbaser, s.intid, s.target_vcpu, s.pending_latch, s.hw, s.vpt,
                            True).fault is None:
                scns.append(replace(s, packed=len(scns) % 2 == 0))
        for order, v41 in itertools.product(("intid", "insertion"), (False, True)):
            assert_save_many_matches(scns, order=order, atomic=True, has_gicv4_1=v41)


def test_packed_parallel_kernels_with_tiny_units(tiny_units):
    for seed in range(100):
        scn = _packed(gen_scenario(_rng(5, seed), max_lpis=120))
        for order, atomic, v41 in SAVE_MODES[seed % 4 :: 4]:
            assert_engine_matches("save", scn, order=order, atomic=atomic, has_gicv4_1=v41)
        assert_engine_matches("sync_pending_status", scn, atomic=bool(seed % 2))


def test_packed_operation_chains_on_live_objects():
    """Saves, restores, scans, retargeting and flag changes (``set_flags``) on one live packed
    table, each step compared with the reference on a snapshot: the engine's cached jobs must
    follow every change of the table's bits."""
    for seed in range(40):
        rng = _rng(6, seed)
        scn = _packed(gen_scenario(rng, max_lpis=80))
        mem, pend, lpis, vpt = scn.build()
        for step in range(10):
            cur = _packed(Scenario.from_objects(mem, pend, lpis, vpt, name=f"packed chain {seed}/{step}"))
            live = (mem, pend, lpis, vpt)
            op = int(rng.integers(0, 6))
            if op <= 1:
                order, atomic, v41 = SAVE_MODES[int(rng.integers(0, len(SAVE_MODES)))]
                assert_engine_matches("save", cur, live=live, order=order, atomic=atomic, has_gicv4_1=v41)
            elif op == 2:
                assert_engine_matches("sync_pending_status", cur, live=live, atomic=bool(rng.integers(0, 2)),
                                      stop_on_error=bool(rng.integers(0, 2)))
            elif op == 3:
                assert_engine_matches("sync_pending_table", cur, live=live, vcpu=int(rng.integers(0, len(pend))),
                                      atomic=bool(rng.integers(0, 2)))
            elif op == 4:
                k = rng.choice(len(lpis), max(1, len(lpis) // 4), replace=False)
                lpis.set_targets(k, rng.integers(-1, len(pend), k.size))
            else:
                rows = rng.random(len(lpis)) < 0.3  # (hw stays: the scenario's VPT covers only its hw LPIs)
                lpis.set_flags(rows, pending_latch=~lpis.pending_latch[rows])


# ------------------------------------------------------------------ the table's API
def test_packed_table_holds_bits_and_reads_back_copies():
    n = 1000
    rng = np.random.default_rng(7)
    latch, hw = rng.random(n) < 0.5, rng.random(n) < 0.5
    t = vlpi.LPITable(8192 + np.arange(n), np.arange(n) % 4, latch, hw, packed=True)
    assert t.packed and t.flag_words is not None
    # intid uint32 + int8 target + two bit arrays of (n // 64 + 2) words
    assert t.nbytes == 4 * n + n + 2 * 8 * (n // 64 + 2)
    assert t.pending_latch.dtype == np.bool_ and np.array_equal(t.pending_latch, latch)
    assert np.array_equal(t.hw, hw)
    latch[0] = not latch[0]  # the caller's array was copied in, not used in place
    assert t.pending_latch[0] != latch[0]
    with pytest.raises(ValueError, match="read-only"):
        t.pending_latch[1] = True
    assert "packed" in repr(t) and f"{int(hw.sum())} hw" in repr(t)
    c = t.copy()
    assert c.packed and np.array_equal(c.pending_latch, t.pending_latch)
    assert not np.shares_memory(c.flag_words, t.flag_words)
    w = t.flag_words  # the engine's view of the bits: neither writable nor resizable by a caller
    with pytest.raises(ValueError, match="read-only"):
        w[0] = 1
    with pytest.raises(ValueError):
        w.resize(4, refcheck=False)
    assert np.array_equal(t.pending_latch, latch ^ (np.arange(n) == 0))
    assert not vlpi.LPITable([8192], [0]).packed


@pytest.mark.parametrize("packed", [False, True], ids=["bytes", "packed"])
def test_set_flags_in_both_kinds_of_table(packed):
    n = 200
    t = vlpi.LPITable(8192 + np.arange(n), np.zeros(n, int), packed=packed)
    t.set_flags([3, 5, -1], pending_latch=True)
    t.set_flags(np.arange(n) % 2 == 0, hw=[1] * 100)
    t.set_flags(slice(10, 20), pending_latch=np.ones(10, np.uint8), hw=False)
    want_l = np.zeros(n, bool)
    want_l[[3, 5, n - 1]] = True
    want_l[10:20] = True
    want_h = np.arange(n) % 2 == 0
    want_h[10:20] = False
    assert np.array_equal(t.pending_latch.astype(bool), want_l)
    assert np.array_equal(t.hw.astype(bool), want_h)
    before = (t.pending_latch.copy(), t.hw.copy())
    with pytest.raises(IndexError, match=r"set_flags: index\[1\] = 200"):
        t.set_flags([0, n], pending_latch=True)
    with pytest.raises(ValueError, match=r"pending_latch\[1\] = 2"):
        t.set_flags([0, 1], pending_latch=[1, 2])
    with pytest.raises(ValueError, match="mask has shape"):
        t.set_flags(np.ones(3, bool), hw=True)
    with pytest.raises(TypeError, match="hw must be bool"):
        t.set_flags([0], hw=0.5)
    with pytest.raises(ValueError, match="not broadcastable"):
        t.set_flags([0, 1, 2], hw=[True, False])
    assert np.array_equal(t.pending_latch, before[0]) and np.array_equal(t.hw, before[1])  # nothing changed


def test_packed_must_be_a_bool():
    # (the flag setters of both kinds of table: test_lpi.test_flag_setters_validate_and_change_nothing_on_error)
    with pytest.raises(TypeError, match="packed must be a bool"):
        vlpi.LPITable([8192], [0], packed="yes")


def test_a_partial_restore_packs_back_what_it_assigned():
    """atomic=False: the LPIs before the fault are synced (kernel-exact) and stay synced in the
    packed table, although the engine worked on a byte copy and then raised."""
    for seed in range(200):
        scn = _packed(gen_scenario(_rng(8, seed)))
        r, got = assert_engine_matches("sync_pending_status", scn, atomic=False)
        if r.fault is not None and not np.array_equal(got.pending_latch, scn.pending_latch):
            return  # a fault after at least one assignment: compared above and found equal
    pytest.fail("no partial restore with an assignment before its fault in the sample")


def test_set_flags_from_another_thread_during_saves():
    """A thread changing a packed table's flags while saves run: each save sees a whole flag
    state (set_flags takes the table's lock), so its report matches one of the two states."""
    mem, pend, intid, target, latch, hw, vpt = _layout("rr64")
    a = np.zeros(intid.size, bool)
    b = np.ones(intid.size, bool)
    lpis = vlpi.LPITable(intid, target, a, np.zeros(intid.size, bool), packed=True)
    img = mem.slots[0].data.copy()
    expect = {}
    for name, want in (("a", a), ("b", b)):
        m = clone_memory(mem)
        expect[name] = ref.ref_save(m, pend, intid, target, want, np.zeros(intid.size, bool), None, False,
                                    "intid").guest_writes
    stop = threading.Event()

    def flip():
        k = 0
        while not stop.is_set():
            lpis.set_flags(slice(None), pending_latch=(a, b)[k % 2])
            k += 1

    th = threading.Thread(target=flip)
    th.start()
    try:
        for _ in range(30):
            mem.slots[0].data[:] = img
            rep = vlpi.save_pending_tables(mem, pend, lpis)
            assert rep.guest_writes in expect.values()
    finally:
        stop.set()
        th.join()
