"""Hand-computed cases that pin the reference model itself, and self-tests of the oracle.

The reference is the yardstick for every engine test, so it is checked here against values worked
out by hand from the kernel's documented behaviour (docs/kernel-behaviour.md), not against itself. The oracle is
checked with a reference-backed engine (must pass) and with mutants of it (must fail).
"""

from __future__ import annotations

import errno
import types

import numpy as np
import oracle
import pytest
from hypothesis import given, settings
from oracle import Scenario, SlotSpec, assert_engine_matches
from reference import pendbase, ref_save, ref_sync_pending_status, ref_sync_pending_table
from strategies import gen_scenario, scenarios, slot

from vlpi import GuestMemory, GuestMemoryFault

B0 = 0x8000_0000  # vCPU0's table
B1 = 0x8010_0000  # vCPU1's table
SZ = 0x1000  # table bytes backed by RAM (INTIDs < 32768)


def mk(rows, pendbaser=(B0, B1), slots=None, vpt=None, name="hand") -> Scenario:
    """rows: (intid, target_vcpu, pending_latch, hw) in creation order."""
    if slots is None:
        slots = [slot(pendbase(p), SZ) for p in dict.fromkeys(pendbaser)]
    a = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return Scenario(list(slots), np.array(pendbaser, dtype=np.uint64), a[:, 0], a[:, 1],
                    a[:, 2].astype(bool), a[:, 3].astype(bool), vpt, name)


def run_save(scn: Scenario, **kw):
    mem = scn.memory()
    r = ref_save(mem, scn.pendbaser, scn.intid, scn.target_vcpu, scn.pending_latch, scn.hw, scn.vpt, **kw)
    return r, mem


def byte(mem: GuestMemory, gpa: int) -> int:
    return int(mem.read(gpa, 1)[0])


# ------------------------------------------------------------------------------- save
def test_zenghui_yu_same_byte_offset_two_tables():
    """ca185b260951: LPIs 8192 (vCPU0) and 8193 (vCPU1) share byte offset 1024 but live in two
    tables. The cache is keyed on the GPA, so both tables are read and each gets only its bit;
    a byte-offset-keyed cache would write 0x03 over vCPU1's byte and drop its stale bit 7."""
    s = mk([(8192, 0, 1, 0), (8193, 1, 1, 0)])
    s.slots[1].data[1024] = 0x80  # stale bit of INTID 8199 (no LPI) in vCPU1's table
    r, mem = run_save(s)
    assert r.ret == 0
    assert r.read_trace == [B0 + 1024, B1 + 1024]
    assert r.write_trace == [(B0 + 1024, 0x01), (B1 + 1024, 0x82)]
    assert byte(mem, B0 + 1024) == 0x01 and byte(mem, B1 + 1024) == 0x82
    assert r.bytes_changed == 2


def test_eight_changed_lpis_in_one_byte_are_eight_writes():
    s = mk([(8192 + k, 0, 1, 0) for k in range(8)], pendbaser=(B0,))
    r, mem = run_save(s)
    assert r.read_trace == [B0 + 1024]  # one read: same GPA all along
    assert r.write_trace == [(B0 + 1024, (1 << (k + 1)) - 1) for k in range(8)]
    assert byte(mem, B0 + 1024) == 0xFF
    assert (r.guest_writes, r.bytes_changed, r.dirty_pages.tolist()) == (8, 1, [(B0 + 1024) >> 12])


def test_insertion_order_accumulates_in_creation_order():
    s = mk([(8199 - k, 0, 1, 0) for k in range(8)], pendbaser=(B0,))
    r, _ = run_save(s, order="insertion")
    assert [v for _, v in r.write_trace] == [0x80, 0xC0, 0xE0, 0xF0, 0xF8, 0xFC, 0xFE, 0xFF]
    r, _ = run_save(s, order="intid")
    assert [v for _, v in r.write_trace] == [0x01, 0x03, 0x07, 0x0F, 0x1F, 0x3F, 0x7F, 0xFF]


def test_unchanged_bits_no_write_and_other_bits_preserved():
    # byte 1024 = 0b1010_0101: LPIs 8192 (bit0 set, latch 1), 8193 (bit1 clear, latch 0) unchanged;
    # 8194 (bit2 set, latch 0) -> clear; bits 5 and 7 belong to no LPI: preserved
    s = mk([(8192, 0, 1, 0), (8193, 0, 0, 0), (8194, 0, 0, 0)], pendbaser=(B0,))
    s.slots[0].data[1024] = 0b1010_0101
    r, mem = run_save(s)
    assert r.write_trace == [(B0 + 1024, 0b1010_0001)]
    assert byte(mem, B0 + 1024) == 0b1010_0001


def test_out_of_range_intid_last_writer_wins_depends_on_order():
    """An INTID beyond the table (possible after RESTORE_TABLES) aliases another vCPU's bit:
    vCPU1's table is 64 KiB after vCPU0's; INTID 8192 + 2**19 of vCPU0 lands on
    the bit of INTID 8192 of vCPU1. The last LPI in walk order decides the bit."""
    base = 0x4000_0000
    pend = (base, base + 0x10000)
    slots = [slot(base, 0x20000)]
    rows = [(8192 + (1 << 19), 0, 0, 0), (8192, 1, 1, 0)]  # creation: the OOR one first
    r, mem = run_save(mk(rows, pendbaser=pend, slots=slots), order="intid")
    # INTID order: 8192 (sets the bit) then 532480 (clears it): final 0, byte written then restored
    assert r.write_trace == [(base + 0x10000 + 1024, 1), (base + 0x10000 + 1024, 0)]
    assert byte(mem, base + 0x10000 + 1024) == 0
    assert r.bytes_changed == 0 and r.dirty_pages.tolist() == [(base + 0x10000 + 1024) >> 12]
    assert r.guest_reads == 1  # same GPA, consecutive in the walk: one read
    r, mem = run_save(mk(rows, pendbaser=pend, slots=slots), order="insertion")
    # creation order: 532480 (bit already 0: no write), then 8192 sets it: final 1
    assert r.write_trace == [(base + 0x10000 + 1024, 1)]
    assert byte(mem, base + 0x10000 + 1024) == 1


def test_cache_is_keyed_on_gpa_so_aliases_reuse_it():
    # Same GPA reached from two different vCPUs and INTIDs (64 KiB apart) -> consecutive in
    # insertion order -> ONE read (cache on the absolute GPA, not on (vCPU, offset)).
    base = 0x4000_0000
    s = mk([(8192 + (1 << 19), 0, 1, 0), (8193, 1, 1, 0)], pendbaser=(base, base + 0x10000),
           slots=[slot(base, 0x20000)])
    r, mem = run_save(s, order="insertion")
    assert r.read_trace == [base + 0x10000 + 1024]
    assert byte(mem, base + 0x10000 + 1024) == 0x03


def test_interleaved_vcpus_reread_the_byte():
    s = mk([(8192, 0, 1, 0), (8193, 1, 1, 0), (8194, 0, 1, 0)])
    r, mem = run_save(s)
    assert r.read_trace == [B0 + 1024, B1 + 1024, B0 + 1024]
    assert byte(mem, B0 + 1024) == 0x05 and byte(mem, B1 + 1024) == 0x02


def test_aliased_pendbaser_merges_into_one_byte():
    # two vCPUs with one PENDBASER (allowed, unchecked): one read, writes accumulate
    s = mk([(8192, 0, 1, 0), (8193, 1, 1, 0), (8194, 0, 0, 0)], pendbaser=(B0, B0))
    s.slots[0].data[1024] = 0x04
    r, mem = run_save(s)
    assert r.read_trace == [B0 + 1024]
    assert r.write_trace == [(B0 + 1024, 0x05), (B0 + 1024, 0x07), (B0 + 1024, 0x03)]
    assert byte(mem, B0 + 1024) == 0x03


def test_untargeted_lpi_is_skipped_without_resetting_the_cache():
    s = mk([(8192, 0, 1, 0), (8193, -1, 1, 0), (8194, 0, 1, 0)], pendbaser=(B0,))
    r, mem = run_save(s)
    assert r.read_trace == [B0 + 1024]
    assert r.lpis_skipped == 1
    assert byte(mem, B0 + 1024) == 0x05  # bit 1 (untargeted) untouched


def test_junk_in_pendbaser_ignored():
    junk = (0xFFF << 52) | 0xFFFF | B0
    s = mk([(8200, 0, 1, 0)], pendbaser=(junk,), slots=[slot(B0, SZ)])
    r, mem = run_save(s)
    assert r.read_trace == [B0 + 1025] and byte(mem, B0 + 1025) == 0x01


def test_first_kib_never_touched_and_unprogrammed_pendbaser_uses_gpa_zero():
    rng = np.random.default_rng(1)
    intids = rng.choice(np.arange(8192, 8192 + 8 * 512), size=300, replace=False)
    rows = [(int(i), 0, int(rng.random() < 0.5), 0) for i in intids]
    s = mk(rows, pendbaser=(0x0,), slots=[slot(0, 4096)])
    s.slots[0].data[:] = rng.integers(0, 256, 4096, dtype=np.uint8)
    first_kib = s.slots[0].data[:1024].copy()
    r, mem = run_save(s)
    assert r.ret == 0
    assert min(r.read_trace) >= 1024 and min(g for g, _ in r.write_trace) >= 1024
    assert np.array_equal(mem.read(0, 1024), first_kib)
    for i, _, latch, _ in rows:  # every LPI's bit now equals its latch
        assert (byte(mem, i // 8) >> (i % 8)) & 1 == latch


def test_read_fault_stops_keeps_earlier_writes_and_counts_the_read():
    # vCPU1's table has no RAM; 8192 (v0) written, 8193 (v1) faults, 8194 (v0) never reached
    s = mk([(8192, 0, 1, 0), (8193, 1, 1, 0), (8194, 0, 1, 0)], slots=[slot(B0, SZ)])
    r, mem = run_save(s, has_gicv4_1=True)
    assert r.ret == -errno.EFAULT
    assert (r.fault.gpa, r.fault.intid, r.fault.vcpu, r.fault.write) == (B1 + 1024, 8193, 1, False)
    assert r.read_trace == [B0 + 1024, B1 + 1024]
    assert byte(mem, B0 + 1024) == 0x01
    assert (r.vpes_unmapped, r.vpes_remapped) == (2, 2)  # remapped also after a fault


def test_readonly_slot_faults_only_on_a_changed_bit():
    s = mk([(8192, 0, 0, 0), (8193, 0, 1, 0)], pendbaser=(B0,), slots=[slot(B0, SZ, readonly=True)])
    s.slots[0].data[1024] = 0x02  # both bits already equal the latch: no write, no fault
    r, _ = run_save(s)
    assert r.ret == 0 and r.guest_writes == 0
    s.slots[0].data[1024] = 0x00  # 8193 must be set: write fault
    r, mem = run_save(s)
    assert r.ret == -errno.EFAULT and r.fault.write and r.fault.intid == 8193
    assert r.write_trace == [(B0 + 1024, 0x02)]  # the faulting write counts as issued
    assert byte(mem, B0 + 1024) == 0 and r.dirty_pages.size == 0 and r.bytes_changed == 0


def test_hw_lpi_vpt_replaces_latch_only_with_gicv4_1():
    vpt = np.zeros((2, 1040), dtype=np.uint8)
    vpt[1, 1024] = 0x02  # INTID 8193 pending in vCPU1's VPT
    s = mk([(8192, 1, 1, 1), (8193, 1, 0, 1), (8194, 1, 1, 0)], vpt=vpt)
    r, mem = run_save(s, has_gicv4_1=True)
    assert r.vpt_trace == [(1, 1024, 0), (1, 1024, 1)]
    assert byte(mem, B1 + 1024) == 0b110  # 8192 from VPT (0), 8193 from VPT (1), 8194 latch
    assert (r.vpes_unmapped, r.vpes_remapped) == (2, 2)
    r, mem = run_save(s, has_gicv4_1=False)
    assert r.vpt_reads == 0 and (r.vpes_unmapped, r.vpes_remapped) == (0, 0)
    assert byte(mem, B1 + 1024) == 0b101  # GICv4.0: pending_latch saved


def test_vpes_unmapped_even_without_lpis():
    s = mk(np.zeros((0, 4)), pendbaser=(B0, B1, B0))
    r, _ = run_save(s, has_gicv4_1=True)
    assert (r.ret, r.vpes_unmapped, r.vpes_remapped, r.guest_reads) == (0, 3, 3, 0)


def test_second_save_is_a_no_op():
    s = gen_scenario(np.random.default_rng(7), clean=True, layout="spread")
    mem = s.memory()
    ref_save(mem, s.pendbaser, s.intid, s.target_vcpu, s.pending_latch, s.hw, s.vpt)
    mem.clear_dirty()
    r = ref_save(mem, s.pendbaser, s.intid, s.target_vcpu, s.pending_latch, s.hw, s.vpt)
    assert r.guest_writes == 0 and mem.dirty_pages().size == 0


def test_unknown_order_rejected():
    with pytest.raises(ValueError, match="order"):
        run_save(mk([(8192, 0, 1, 0)]), order="creation")


# ---------------------------------------------------------------------- sync_pending_status
def run_status(scn, stop_on_error=True):
    mem = scn.memory()
    latch = scn.pending_latch.copy()
    r = ref_sync_pending_status(mem, scn.pendbaser, scn.intid, scn.target_vcpu, latch, stop_on_error)
    return r, mem, latch


def test_sync_status_consumes_bits_and_assigns_latch():
    s = mk([(8193, 0, 1, 0), (8192, 0, 0, 0), (8194, 1, 0, 0), (8195, -1, 0, 0)])
    s.slots[0].data[1024] = 0b1001  # 8192 and 8195 set in vCPU0's table
    s.slots[1].data[1024] = 0b0100  # 8194 set in vCPU1's table
    r, mem, latch = run_status(s)
    assert latch.tolist() == [False, True, True, False]  # 8193's latch cleared (assignment)
    assert r.read_trace == [B0 + 1024, B0 + 1024, B1 + 1024]  # no cache; untargeted not read
    assert r.write_trace == [(B0 + 1024, 0b1000), (B1 + 1024, 0)]
    assert byte(mem, B0 + 1024) == 0b1000  # 8195's bit is not consumed (no target)
    assert r.lpis_synced == 3 and r.lpi_errno.tolist() == [0, 0, 0, 0]


def test_sync_status_aliases_first_consumer_wins():
    # two LPIs on the same bit (tables 64 KiB apart, an out-of-range INTID): the first in array order consumes it
    base = 0x4000_0000
    s = mk([(8192, 1, 0, 0), (8192 + (1 << 19), 0, 0, 0)], pendbaser=(base, base + 0x10000),
           slots=[slot(base, 0x20000)])
    s.slots[0].data[0x10000 + 1024] = 1
    r, _, latch = run_status(s)
    assert latch.tolist() == [True, False] and r.guest_writes == 1


def test_sync_status_write_fault_leaves_latch_set():
    s = mk([(8192, 0, 0, 0), (8200, 0, 0, 0)], pendbaser=(B0,), slots=[slot(B0, SZ, readonly=True)])
    s.slots[0].data[1024] = 1
    s.slots[0].data[1025] = 1
    r, mem, latch = run_status(s, stop_on_error=True)
    assert r.ret == -errno.EFAULT and r.fault.write and r.fault.intid == 8192
    assert latch.tolist() == [True, False]  # assigned before the faulting write; 8200 never reached
    assert r.lpi_errno.tolist() == [errno.EFAULT, 0]
    assert r.lpis_synced == 0  # assigned, but not synced without error
    r, mem, latch = run_status(s, stop_on_error=False)
    assert latch.tolist() == [True, True]
    assert r.lpi_errno.tolist() == [errno.EFAULT, errno.EFAULT]
    assert r.guest_writes == 2 and byte(mem, B0 + 1024) == 1


def test_sync_status_read_fault_keeps_latch_and_carries_on():
    s = mk([(8192, 1, 1, 0), (8193, 0, 0, 0)], slots=[slot(B0, SZ)])
    s.slots[0].data[1024] = 0x02
    r, mem, latch = run_status(s, stop_on_error=False)
    assert latch.tolist() == [True, True]  # 8192 untouched (read faulted), 8193 loaded
    assert r.lpi_errno.tolist() == [errno.EFAULT, 0]
    assert (r.fault.gpa, r.fault.write, r.lpis_synced) == (B1 + 1024, False, 1)
    assert byte(mem, B0 + 1024) == 0


# ---------------------------------------------------------------------- sync_pending_table
def run_table(scn, vcpu):
    mem = scn.memory()
    latch = scn.pending_latch.copy()
    r = ref_sync_pending_table(mem, scn.pendbaser, scn.intid, scn.target_vcpu, latch, vcpu)
    return r, mem, latch


def test_sync_table_reads_for_every_lpi_assigns_only_own():
    s = mk([(8200, 0, 1, 0), (8192, 1, 0, 0), (8193, -1, 0, 0), (8201, 0, 0, 0), (9000, 1, 1, 0)])
    s.slots[0].data[1024] = 0b11  # read through vCPU0's table for all LPIs
    s.slots[0].data[1025] = 0b10
    r, mem, latch = run_table(s, 0)
    assert r.read_trace == [B0 + 1024, B0 + 1025, B0 + 1125]  # cache on byte offset, INTID order
    assert latch.tolist() == [False, False, False, True, True]  # only vCPU0's LPIs assigned
    assert r.write_trace == [] and r.lpis_synced == 2
    assert mem.dirty_pages().size == 0


def test_sync_table_fault_from_unrelated_lpi_aborts():
    s = mk([(8192, 0, 0, 0), (8192 + 8 * SZ, 1, 1, 0), (8193 + 8 * SZ, 0, 0, 0)])
    s.slots[0].data[1024] = 1
    r, _, latch = run_table(s, 0)
    # 8192 loaded; then vCPU1's LPI's byte lies beyond vCPU0's RAM: the scan aborts there
    assert r.ret == -errno.EFAULT
    assert (r.fault.gpa, r.fault.intid, r.fault.vcpu) == (B0 + (8192 + 8 * SZ) // 8, 8192 + 8 * SZ, 0)
    assert latch.tolist() == [True, True, False]


# ------------------------------------------------------------------- oracle self-tests
def _report(r, **extra):
    d = dict(lpis_total=r.lpis_total, lpis_skipped=r.lpis_skipped, guest_reads=r.guest_reads,
             guest_writes=r.guest_writes, vpt_reads=r.vpt_reads, bytes_changed=r.bytes_changed,
             vpes_unmapped=r.vpes_unmapped, vpes_remapped=r.vpes_remapped, dirty_pages=r.dirty_pages,
             lpis_synced=r.lpis_synced, lpi_errno=r.lpi_errno, elapsed_s=0.0)
    d.update(extra)
    return types.SimpleNamespace(**d)


def reference_engine(mutant: str = ""):
    """A contract-following engine built on the reference (atomic by trial on a copy)."""

    def save(mem, pendbaser, lpis, vpt=None, *, has_gicv4_1=False, order="intid", atomic=True):
        args = (pendbaser, np.asarray(lpis.intid), np.asarray(lpis.target_vcpu),
                np.asarray(lpis.pending_latch), np.asarray(lpis.hw), vpt, has_gicv4_1, order)
        if atomic and mutant != "non_atomic":
            trial = Scenario.from_objects(mem, pendbaser, lpis, vpt).memory()
            r = ref_save(trial, *args)
            if r.fault is not None:
                rep = _report(r, guest_writes=0, bytes_changed=0, dirty_pages=np.zeros(0, np.int64))
                raise GuestMemoryFault(r.fault.gpa, write=r.fault.write, intid=r.fault.intid,
                                       vcpu=r.fault.vcpu, report=rep)
        r = ref_save(mem, *args)
        extra = {}
        if mutant == "reads_off_by_one":
            extra["guest_reads"] = r.guest_reads + 1
        if mutant == "flip_byte" and mem.slots:
            mem.slots[0].data[-1] ^= 1
        if mutant == "wrong_fault_intid" and r.fault:
            r.fault.intid += 1
        if r.fault is not None:
            raise GuestMemoryFault(r.fault.gpa, write=r.fault.write, intid=r.fault.intid,
                                   vcpu=r.fault.vcpu, report=_report(r, **extra))
        return _report(r, **extra)

    return save


@pytest.mark.parametrize("atomic", [True, False])
def test_oracle_accepts_reference_engine(monkeypatch, atomic):
    monkeypatch.setitem(oracle.OPERATIONS["save"], "engine",
                        lambda m, p, lp, v, **kw: reference_engine()(m, p, lp, v, **kw))
    faults = 0
    for seed in range(60):
        s = gen_scenario(np.random.default_rng(seed), max_lpis=40)
        r, _ = assert_engine_matches("save", s, atomic=atomic, has_gicv4_1=bool(seed % 2),
                                     order=("intid", "insertion")[seed % 3 == 0])
        faults += r.fault is not None
    assert 5 < faults < 55  # the generator yields both outcomes


@pytest.mark.parametrize(
    ("mutant", "atomic", "needle"),
    [
        ("reads_off_by_one", False, "report.guest_reads"),
        ("flip_byte", False, "bytes differ"),
        ("wrong_fault_intid", False, "fault intid"),
        ("non_atomic", True, "atomic fault"),
    ],
)
def test_oracle_catches_mutants(monkeypatch, mutant, atomic, needle):
    monkeypatch.setitem(oracle.OPERATIONS["save"], "engine",
                        lambda m, p, lp, v, **kw: reference_engine(mutant)(m, p, lp, v, **kw))
    caught = 0
    for seed in range(40):
        s = gen_scenario(np.random.default_rng(seed), max_lpis=40)
        try:
            assert_engine_matches("save", s, atomic=atomic)
        except AssertionError as e:
            assert needle in str(e)
            assert "Scenario" in str(e)  # the diff carries the scenario dump
            caught += 1
    assert caught > 0


@settings(max_examples=60)
@given(scenarios(max_lpis=32))
def test_strategy_scenarios_build_and_save_converges(scn):
    # the strategy produces buildable scenarios; after a successful save every bit is as wanted
    s = scn
    mem, pend, lpis, vpt = s.build()
    assert len(lpis) == s.n_lpis and len(mem.slots) == len(s.slots)
    for sl in mem.slots:
        assert sl.gpa >= 0 and sl.end <= 1 << 52
    r = ref_save(mem, pend, s.intid, s.target_vcpu, s.pending_latch, s.hw, s.vpt, True)
    if r.fault is None:
        # after a successful save every targeted LPI's bit equals its wanted state, unless an
        # alias (another LPI on the same GPA/bit) later in the walk overrode it
        seen: dict = {}
        for i in sorted(range(s.n_lpis), key=lambda k: int(s.intid[k])):
            t = int(s.target_vcpu[i])
            if t < 0:
                continue
            key = (pendbase(int(s.pendbaser[t])) + int(s.intid[i]) // 8, int(s.intid[i]) % 8)
            want = bool(s.pending_latch[i])
            if s.hw[i]:
                want = bool(s.vpt[t, int(s.intid[i]) // 8] >> (int(s.intid[i]) % 8) & 1)
            seen[key] = want
        for (gpa, bit), want in seen.items():
            assert (byte(mem, gpa) >> bit) & 1 == want


def test_scenario_copies_are_independent():
    s = gen_scenario(np.random.default_rng(3), clean=True)
    m1, m2 = s.memory(), s.memory()
    m1.slots[0].data[0] ^= 0xFF
    assert m2.slots[0].data[0] == s.slots[0].data[0]
    assert SlotSpec  # re-exported for test authors


# ---------------------------------------------------- reference vs closed-form counts
def _wanted(s: Scenario, i: int, v41: bool) -> int:
    iid = int(s.intid[i])
    if v41 and s.hw[i]:
        return (int(s.vpt[int(s.target_vcpu[i]), iid // 8]) >> (iid % 8)) & 1
    return int(s.pending_latch[i])


@settings(max_examples=150)
@given(scn=scenarios(max_lpis=64))
def test_reference_save_matches_closed_form(scn):
    """For a fault-free save, an independent formulation: reads = number of GPA changes along
    the walk of targeted LPIs; per (GPA, bit) the writes are the transitions of the sequence
    (initial bit, wanted_1, wanted_2, ...); the final bit is the last wanted value."""
    s = scn
    for order in ("intid", "insertion"):
        for v41 in (False, True):
            mem = s.memory()
            r = ref_save(mem, s.pendbaser, s.intid, s.target_vcpu, s.pending_latch, s.hw, s.vpt, v41, order)
            if r.fault is not None:
                continue
            walk = sorted(range(s.n_lpis), key=lambda k: int(s.intid[k])) if order == "intid" else range(s.n_lpis)
            walk = [i for i in walk if s.target_vcpu[i] >= 0]
            gpas = [pendbase(int(s.pendbaser[int(s.target_vcpu[i])])) + int(s.intid[i]) // 8 for i in walk]
            assert r.guest_reads == sum(1 for k, g in enumerate(gpas) if k == 0 or g != gpas[k - 1])
            init = s.memory()
            seq: dict = {}
            for i, g in zip(walk, gpas, strict=True):
                seq.setdefault((g, int(s.intid[i]) % 8), []).append(_wanted(s, i, v41))
            writes = 0
            for (g, bit), wants in seq.items():
                cur = (byte(init, g) >> bit) & 1
                for w in wants:
                    writes += w != cur
                    cur = w
                assert (byte(mem, g) >> bit) & 1 == wants[-1]
            assert r.guest_writes == writes
            assert r.vpt_reads == (sum(1 for i in walk if s.hw[i]) if v41 else 0)
            assert r.lpis_skipped == s.n_lpis - len(walk)


@settings(max_examples=150)
@given(scn=scenarios(max_lpis=64))
def test_reference_restore_matches_closed_form(scn):
    """Fault-free restore: each targeted LPI (array order) gets its initial bit unless an
    earlier LPI on the same (GPA, bit) consumed it; writes = number of LPIs that found a 1."""
    s = scn
    mem = s.memory()
    latch = s.pending_latch.copy()
    r = ref_sync_pending_status(mem, s.pendbaser, s.intid, s.target_vcpu, latch, True)
    if r.fault is not None:
        return
    init = s.memory()
    consumed: set = set()
    want = s.pending_latch.copy()
    for i in range(s.n_lpis):
        t = int(s.target_vcpu[i])
        if t < 0:
            continue
        g, bit = pendbase(int(s.pendbaser[t])) + int(s.intid[i]) // 8, int(s.intid[i]) % 8
        want[i] = ((byte(init, g) >> bit) & 1) == 1 and (g, bit) not in consumed
        if want[i]:
            consumed.add((g, bit))
    assert latch.tolist() == want.tolist()
    assert r.guest_writes == len(consumed) and r.guest_reads == int(np.count_nonzero(s.target_vcpu >= 0))
    for g, bit in consumed:
        assert (byte(mem, g) >> bit) & 1 == 0


# ------------------------------------------------------ oracle self-tests: restore ops
def reference_sync_engine(mutant: str = ""):
    """sync_pending_status / sync_pending_table built on the reference, with optional bugs."""

    def report(r):
        return _report(r)

    def raise_fault(r, rep):
        raise GuestMemoryFault(r.fault.gpa, write=r.fault.write, intid=r.fault.intid, vcpu=r.fault.vcpu, report=rep)

    def status(mem, pendbaser, lpis, vpt=None, *, atomic=True, stop_on_error=True):
        args = (pendbaser, np.asarray(lpis.intid), np.asarray(lpis.target_vcpu))
        if atomic and stop_on_error:
            trial = Scenario.from_objects(mem, pendbaser, lpis).memory()
            r = ref_sync_pending_status(trial, *args, lpis.pending_latch.copy(), True)
            if r.fault is not None:
                raise_fault(r, _report(r, guest_writes=0, bytes_changed=0, dirty_pages=np.zeros(0, np.int64)))
        latch = lpis.pending_latch
        before = latch.copy()
        r = ref_sync_pending_status(mem, *args, latch, stop_on_error)
        if mutant == "latch_restored_on_write_fault" and r.fault is not None and r.fault.write:
            k = int(np.flatnonzero(np.asarray(lpis.intid) == r.fault.intid)[0])
            latch[k] = before[k]
        if r.fault is not None and stop_on_error:
            raise_fault(r, report(r))
        return report(r)

    def table(mem, pendbaser, lpis, vcpu, *, atomic=True):
        args = (pendbaser, np.asarray(lpis.intid), np.asarray(lpis.target_vcpu))
        latch = lpis.pending_latch
        if atomic:
            r = ref_sync_pending_table(mem, *args, latch.copy(), vcpu)
            if r.fault is not None:
                raise_fault(r, _report(r))
        tgt = np.asarray(lpis.target_vcpu)
        if mutant == "scan_assigns_all":
            tgt = np.full_like(tgt, vcpu)
        r = ref_sync_pending_table(mem, pendbaser, np.asarray(lpis.intid), tgt, latch, vcpu)
        if r.fault is not None:
            raise_fault(r, report(r))
        return report(r)

    return status, table


@pytest.mark.parametrize("mutant", ["", "latch_restored_on_write_fault", "scan_assigns_all"])
def test_oracle_on_restore_ops(monkeypatch, mutant):
    status, table = reference_sync_engine(mutant)
    monkeypatch.setitem(oracle.OPERATIONS["sync_pending_status"], "engine",
                        lambda m, p, lp, v, **kw: status(m, p, lp, v, **kw))
    monkeypatch.setitem(oracle.OPERATIONS["sync_pending_table"], "engine",
                        lambda m, p, lp, v, *, vcpu, **kw: table(m, p, lp, vcpu, **kw))
    caught = 0
    for seed in range(80):
        s = gen_scenario(np.random.default_rng([5, seed]), max_lpis=40)
        for op, kw in (("sync_pending_status", dict(atomic=False)), ("sync_pending_status", dict(stop_on_error=False)),
                       ("sync_pending_status", dict(atomic=True)), ("sync_pending_table", dict(vcpu=0)),
                       ("sync_pending_table", dict(vcpu=0, atomic=False))):
            try:
                assert_engine_matches(op, s, **kw)
            except AssertionError as e:
                assert mutant, f"the correct reference-backed engine was rejected:\n{e}"
                assert "pending_latch" in str(e) or "lpis_synced" in str(e)
                caught += 1
    assert (caught > 0) == bool(mutant)


def test_scenario_to_code_round_trips():
    for seed in range(20):
        s = gen_scenario(np.random.default_rng([6, seed]), max_lpis=30)
        for sl in s.slots:
            sl.dirty = None  # to_code does not carry the initial dirty log
        t = eval(s.to_code(), {"np": np, "Scenario": Scenario, "slot": slot})
        assert t.describe() == s.describe()
        assert all(np.array_equal(a.data, b.data) and a.readonly == b.readonly and a.gpa == b.gpa
                   for a, b in zip(s.slots, t.slots, strict=True))
        for f in ("pendbaser", "intid", "target_vcpu", "pending_latch", "hw"):
            assert np.array_equal(getattr(s, f), getattr(t, f)), f
        assert (s.vpt is None and t.vpt is None) or np.array_equal(s.vpt, t.vpt)
