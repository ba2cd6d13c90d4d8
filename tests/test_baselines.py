"""The benchmark baselines (benchmarks/baselines.py) give the engine's result on small scenarios.

Every baseline runs on its own fresh copy of a scenario and is compared, bytes and counts, with
the literal reference (tests/reference.py) and, when importable, with the engine. Scenarios cover
what makes the vectorised baselines take different paths: disjoint and aliasing vCPU tables,
LPIs sharing bytes, untargeted LPIs, hw LPIs with and without GICv4.1, tables split over two
adjacent memslots, both walk orders, and faults (unmapped and read-only memory).
"""

from __future__ import annotations

import os
import sys
import zlib
from dataclasses import dataclass

import numpy as np
import pytest

from vlpi import GuestMemory, GuestMemoryFault, LPITable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import baselines as bl  # noqa: E402

SAVE_FIELDS = (
    "lpis_total",
    "lpis_skipped",
    "guest_reads",
    "guest_writes",
    "vpt_reads",
    "bytes_changed",
    "vpes_unmapped",
    "vpes_remapped",
)
SYNC_FIELDS = ("lpis_total", "lpis_synced", "guest_reads", "guest_writes")


@dataclass
class Case:
    """A scenario as plain data; :meth:`build` returns fresh, independent objects every call."""

    slots: list  # (gpa, bytes, readonly)
    pendbaser: np.ndarray
    intid: np.ndarray
    target: np.ndarray
    pending: np.ndarray
    hw: np.ndarray
    vpt: np.ndarray

    def build(self):
        mem = GuestMemory()
        for gpa, data, ro in self.slots:
            mem.add_slot(gpa, data.size, readonly=ro, data=data.copy())
        lpis = LPITable(self.intid, self.target, self.pending.copy(), self.hw.copy())
        return mem, self.pendbaser.copy(), lpis, self.vpt.copy()


def make_case(
    seed: int,
    *,
    vcpus: int = 4,
    id_bits: int = 14,
    density: float = 0.5,
    alias: bool = False,
    split: bool | str = False,
    untargeted: float = 0.1,
) -> Case:
    """Random VM: ``vcpus`` tables 64 KiB apart (or all on two shared bases when ``alias``),
    a random subset of INTIDs ``8192..2**id_bits-1`` as LPIs in random creation order."""
    rng = np.random.default_rng(seed)
    if alias:
        # vCPU 1's table starts 64 KiB after vCPU 0's: INTID j on vCPU 1 and INTID j + 2**19 on
        # vCPU 0 are the same bit of the same byte; vCPUs 2, 3 share vCPU 0's base (shared bytes)
        id_bits = 20
        low = 8192 + np.flatnonzero(rng.random(8192) < density)
        intid = np.concatenate([low, low[rng.random(low.size) < 0.7] + (1 << 19)])
    else:
        intid = 8192 + np.flatnonzero(rng.random((1 << id_bits) - 8192) < density)
    rng.shuffle(intid)
    n = intid.size
    target = rng.integers(0, vcpus, n)
    if alias:
        hi = intid >= (1 << 19)
        target[hi] = np.where(rng.random(int(hi.sum())) < 0.8, 0, 2)
        target[~hi] = np.where(rng.random(int((~hi).sum())) < 0.8, 1, 3)
    target[rng.random(n) < untargeted] = -1
    ram_gpa = 0x4000_0000
    pendbaser = (ram_gpa + 0x10000 * np.arange(vcpus)).astype(np.uint64) | np.uint64(0x380)
    if alias:
        pendbaser[2:] = pendbaser[0] | np.uint64(0x4000_0000_0000_0000)  # PTZ etc. are ignored
    size = 0x10000 * (vcpus + 1)
    data = rng.integers(0, 256, size, dtype=np.uint8)
    if split == "table":  # one memslot per vCPU table, adjacent
        slots = [(ram_gpa + o, data[o : o + 0x10000].copy(), False) for o in range(0, size, 0x10000)]
    elif split:
        cut = 0x10000 + 1024 + 3  # table of vCPU 1 straddles two adjacent slots
        slots = [(ram_gpa, data[:cut].copy(), False), (ram_gpa + cut, data[cut:].copy(), False)]
    else:
        slots = [(ram_gpa, data, False)]
    vpt = rng.integers(0, 256, (vcpus, (1 << id_bits) // 8), dtype=np.uint8)
    return Case(slots, pendbaser, intid, target, rng.random(n) < 0.5, rng.random(n) < 0.5, vpt)


def _mem_bytes(mem: GuestMemory) -> list:
    return [(s.gpa, s.data.copy()) for s in mem.slots]


def _check_same(a, b, fields, what: str) -> None:
    for f in fields:
        assert getattr(a, f) == getattr(b, f), f"{what}: {f} {getattr(a, f)} != {getattr(b, f)}"
    np.testing.assert_array_equal(np.asarray(a.dirty_pages), np.asarray(b.dirty_pages), err_msg=what)


def _assert_mem_equal(m1: GuestMemory, m2: GuestMemory, what: str) -> None:
    for (g1, d1), (g2, d2) in zip(_mem_bytes(m1), _mem_bytes(m2), strict=True):
        assert g1 == g2
        diff = np.flatnonzero(d1 != d2)
        assert diff.size == 0, f"{what}: {diff.size} bytes differ, first at GPA {g1 + int(diff[0]):#x}"
    np.testing.assert_array_equal(m1.dirty_pages(), m2.dirty_pages(), err_msg=f"{what}: dirty log")


CASES = {
    "disjoint": dict(),
    "dense-1vcpu": dict(vcpus=1, density=1.0, untargeted=0.0),
    "sparse": dict(vcpus=8, id_bits=16, density=0.02),
    "alias": dict(alias=True),
    "split-slots": dict(split=True),
    "slot-per-table": dict(split="table"),
    "no-lpis": dict(density=0.0),
}


def _c_param():
    """The plain-C kernel loop: skipped (with the reason) where no C compiler can build it."""
    r = bl.unavailable_reason("c_kernel_loop")
    return pytest.param("c_kernel_loop", marks=pytest.mark.skipif(bool(r), reason=r or ""))


def _saves():
    out = [
        pytest.param(n, marks=pytest.mark.skipif(bool(r), reason=r or ""))
        for n, r in ((n, bl.unavailable_reason(n)) for n in ("numpy", "bitarray", "kernel_loop", "c_kernel_loop"))
    ]
    return out


@pytest.mark.parametrize("impl", _saves())
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("gic", ["v3", "v4.1"])
@pytest.mark.parametrize("order", ["intid", "insertion"])
def test_save_baseline_matches_reference(impl, case, gic, order):
    c = make_case(zlib.crc32(f"{case}/{gic}/{order}".encode()) % 1000, **CASES[case])
    v41 = gic == "v4.1"
    m_ref, pb, l_ref, vpt = c.build()
    ref = bl.python_save(m_ref, pb, l_ref, vpt=vpt, has_gicv4_1=v41, order=order)
    m_b, pb, l_b, vpt = c.build()
    got = bl.SAVE_BASELINES[impl](m_b, pb, l_b, vpt=vpt, has_gicv4_1=v41, order=order)
    _check_same(got, ref, SAVE_FIELDS, f"{impl} vs reference")
    _assert_mem_equal(m_b, m_ref, f"{impl} vs reference")
    assert ref.guest_writes > 0 or case == "no-lpis"  # the scenario exercises writes
    # a second save (nothing to change, except bits that aliasing LPIs fight over) agrees too
    ref2 = bl.python_save(m_ref, pb, l_ref, vpt=vpt, has_gicv4_1=v41, order=order)
    again = bl.SAVE_BASELINES[impl](m_b, pb, l_b, vpt=vpt, has_gicv4_1=v41, order=order)
    _check_same(again, ref2, SAVE_FIELDS, f"{impl} vs reference, second save")
    _assert_mem_equal(m_b, m_ref, f"{impl} vs reference, second save")
    if case != "alias":
        assert again.guest_writes == 0 and again.bytes_changed == 0


def test_alias_case_really_aliases():
    """The alias scenario walks some (GPA, bit) more than once, so the replay path is exercised."""
    c = make_case(3, alias=True)
    m, pb, lpis, vpt = c.build()
    w = bl._walk(lpis, "intid")
    assert not bl._tables_disjoint(pb.astype(np.uint64), w)
    gpa, bit = bl._gpa_bit(pb.astype(np.uint64), w)
    key = (gpa << np.uint64(3)) | bit.astype(np.uint64)
    assert np.unique(key).size < key.size


@pytest.mark.parametrize("impl", ["engine", "engine_many"])
@pytest.mark.parametrize("case", ["disjoint", "alias", "sparse"])
def test_numpy_baseline_matches_engine(impl, case):
    import vlpi

    c = make_case(11, **CASES[case])
    m_e, pb, l_e, vpt = c.build()
    if impl == "engine":
        rep = vlpi.save_pending_tables(m_e, pb, l_e, vpt=vpt, has_gicv4_1=True)
    else:
        (rep,) = vlpi.save_pending_tables_many([(m_e, pb, l_e, vpt)], has_gicv4_1=True)
    m_b, pb, l_b, vpt = c.build()
    got = bl.numpy_save(m_b, pb, l_b, vpt=vpt, has_gicv4_1=True)
    _check_same(got, rep, SAVE_FIELDS, f"numpy vs {impl}")
    _assert_mem_equal(m_b, m_e, f"numpy vs {impl}")


@pytest.mark.parametrize("impl", ["numpy", "bitarray"])
def test_save_fault_unmapped_raises_before_writing(impl):
    c = make_case(5)
    m, pb, lpis, vpt = c.build()
    pb[2] = np.uint64(0x7000_0000)  # vCPU 2's table is not backed by any memslot
    before = _mem_bytes(m)
    m_ref, _, l_ref, _ = c.build()
    ref = bl._reference().ref_save(
        m_ref, pb, l_ref.intid, l_ref.target_vcpu, l_ref.pending_latch, l_ref.hw, vpt, False, "intid"
    )
    assert ref.fault is not None
    with pytest.raises(GuestMemoryFault) as ei:
        bl.SAVE_BASELINES[impl](m, pb, lpis, vpt=vpt)
    assert (ei.value.gpa, ei.value.intid, ei.value.vcpu, ei.value.write) == (
        ref.fault.gpa,
        ref.fault.intid,
        ref.fault.vcpu,
        ref.fault.write,
    )
    for (_, a), (_, b) in zip(before, _mem_bytes(m), strict=True):
        np.testing.assert_array_equal(a, b)
    assert m.dirty_pages().size == 0


def test_save_fault_readonly_write():
    c = make_case(6)
    c.slots = [(c.slots[0][0], c.slots[0][1], True)]
    m, pb, lpis, vpt = c.build()
    m_ref, _, l_ref, _ = c.build()
    ref = bl._reference().ref_save(
        m_ref, pb, l_ref.intid, l_ref.target_vcpu, l_ref.pending_latch, l_ref.hw, vpt, False, "intid"
    )
    assert ref.fault is not None and ref.fault.write
    with pytest.raises(GuestMemoryFault) as ei:
        bl.numpy_save(m, pb, lpis, vpt=vpt)
    assert (ei.value.gpa, ei.value.intid, ei.value.write) == (ref.fault.gpa, ref.fault.intid, True)


def test_missing_vpt_and_short_vpt_are_value_errors():
    c = make_case(7)
    m, pb, lpis, vpt = c.build()
    with pytest.raises(ValueError, match="vpt"):
        bl.numpy_save(m, pb, lpis, vpt=None, has_gicv4_1=True)
    with pytest.raises(ValueError, match="VPT byte"):
        bl.numpy_save(m, pb, lpis, vpt=vpt[:, :1000], has_gicv4_1=True)
    assert m.dirty_pages().size == 0


def _restores():
    return [
        pytest.param(n, marks=pytest.mark.skipif(bool(r), reason=r or ""))
        for n, r in ((n, bl.unavailable_reason(n)) for n in ("numpy", "kernel_loop", "c_kernel_loop"))
    ]


@pytest.mark.parametrize("impl", _restores())
@pytest.mark.parametrize("case", ["disjoint", "alias", "split-slots", "dense-1vcpu"])
def test_restore_baseline_matches_reference(impl, case):
    c = make_case(21, **CASES[case])
    m_ref, pb, l_ref, _ = c.build()
    ref = bl.python_restore(m_ref, pb, l_ref)
    m_b, pb, l_b, _ = c.build()
    got = bl.RESTORE_BASELINES[impl](m_b, pb, l_b)
    _check_same(got, ref, SYNC_FIELDS, f"{impl} restore vs reference")
    np.testing.assert_array_equal(np.asarray(got.lpi_errno), np.asarray(ref.lpi_errno))
    _assert_mem_equal(m_b, m_ref, f"{impl} restore vs reference")
    np.testing.assert_array_equal(l_b.pending_latch.astype(bool), l_ref.pending_latch.astype(bool))
    assert ref.guest_writes > 0


@pytest.mark.parametrize("case", ["disjoint", "alias", "sparse"])
@pytest.mark.parametrize("vcpu", [0, 1])
def test_scan_baseline_matches_reference(case, vcpu):
    c = make_case(31, **CASES[case])
    m_ref, pb, l_ref, _ = c.build()
    ref = bl.python_scan(m_ref, pb, l_ref, vcpu)
    m_b, pb, l_b, _ = c.build()
    got = bl.numpy_scan(m_b, pb, l_b, vcpu)
    _check_same(got, ref, SYNC_FIELDS, "numpy scan vs reference")
    np.testing.assert_array_equal(l_b.pending_latch.astype(bool), l_ref.pending_latch.astype(bool))
    assert ref.lpis_synced > 0


def test_scan_fault_keeps_earlier_updates():
    c = make_case(41, vcpus=2, split=True)
    c.slots = c.slots[:1]  # drop the second slot: vCPU 1's table ends in unmapped space
    m_ref, pb, l_ref, _ = c.build()
    res = bl._reference().ref_sync_pending_table(m_ref, pb, l_ref.intid, l_ref.target_vcpu, l_ref.pending_latch, 1)
    assert res.fault is not None
    m_b, pb, l_b, _ = c.build()
    with pytest.raises(GuestMemoryFault) as ei:
        bl.numpy_scan(m_b, pb, l_b, 1)
    assert ei.value.gpa == res.fault.gpa and ei.value.intid == res.fault.intid
    assert ei.value.report.guest_reads == res.guest_reads
    assert ei.value.report.lpis_synced == res.lpis_synced
    np.testing.assert_array_equal(l_b.pending_latch.astype(bool), l_ref.pending_latch.astype(bool))


@pytest.mark.parametrize("impl", ["numpy", "bitarray", "kernel_loop", _c_param()])
@pytest.mark.parametrize("kind", ["host", "sparse"])
def test_baselines_match_engine_on_benchmark_scenarios(impl, kind):
    """The benchmark scenarios themselves (vlpi.scenarios, small): engine_many vs each baseline."""
    import vlpi
    import vlpi.scenarios as scen

    assert not bl.unavailable_reason(impl), bl.unavailable_reason(impl)

    def build():
        if kind == "host":
            return scen.build_host(vms=2, vcpus=8, id_bits=14, gic="v4.1", seed=3)
        rng = np.random.default_rng(3)
        vm = scen.build_vm(4, 20, lpis_per_vcpu=256, gic="v4.1", seed=rng)
        return scen.HostScenario([vm], "v4.1", 3, rng)

    a, b = build(), build()
    reps_e = vlpi.save_pending_tables_many(a.jobs, has_gicv4_1=True)
    reps_b = [bl.SAVE_BASELINES[impl](m, pb, lp, vpt=vpt, has_gicv4_1=True) for m, pb, lp, vpt in b.jobs]
    assert sum(r.guest_writes for r in reps_e) > 0
    for k, (re_, rb, ja, jb) in enumerate(zip(reps_e, reps_b, a.jobs, b.jobs, strict=True)):
        _check_same(rb, re_, SAVE_FIELDS, f"{impl} vs engine_many, VM {k}")
        _assert_mem_equal(jb[0], ja[0], f"{impl} vs engine_many, VM {k}")


@pytest.mark.parametrize(
    ("case", "fast"), [("disjoint", True), ("dense-1vcpu", True), ("alias", False), ("split-slots", False)]
)
def test_numpy_fast_and_general_paths_are_both_exercised(case, fast):
    """The cases above cover both NumPy paths: the cached-layout fast path and the general one."""
    m, pb, lpis, _ = make_case(1, **CASES[case]).build()
    lay = bl._layout(m, np.asarray(pb, np.uint64), lpis, "intid")
    assert (lay is not None) == fast
    if case == "disjoint":
        assert lay.perm is not None  # random targets interleave a byte's LPIs: grouped by byte
    if case == "dense-1vcpu":
        assert not lay.singles  # 8 LPIs per byte: the reduceat branch


@pytest.mark.parametrize("impl", ["numpy", "kernel_loop", _c_param()])
@pytest.mark.parametrize("kind", ["host", "sparse"])
def test_restore_baselines_match_engine_on_benchmark_scenarios(impl, kind):
    import vlpi
    import vlpi.scenarios as scen

    assert not bl.unavailable_reason(impl), bl.unavailable_reason(impl)

    def build():
        if kind == "host":
            return scen.build_host(vms=2, vcpus=8, id_bits=14, gic="v4.1", seed=4)
        rng = np.random.default_rng(4)
        vm = scen.build_vm(4, 20, lpis_per_vcpu=256, gic="v4.1", seed=rng)
        return scen.HostScenario([vm], "v4.1", 4, rng)

    a, b = build(), build()
    for k, (ja, jb) in enumerate(zip(a.jobs, b.jobs, strict=True)):
        re_ = vlpi.sync_pending_status(ja[0], ja[1], ja[2])
        rb = bl.RESTORE_BASELINES[impl](jb[0], jb[1], jb[2])
        assert re_.guest_writes > 0
        _check_same(rb, re_, SYNC_FIELDS, f"{impl} restore vs engine, VM {k}")
        _assert_mem_equal(jb[0], ja[0], f"{impl} restore vs engine, VM {k}")
        np.testing.assert_array_equal(jb[2].pending_latch.astype(bool), ja[2].pending_latch.astype(bool))


# ------------------------------------------------- the plain-C kernel loop: kernel-exact faults
def _faulting_case(kind: str, seed: int):
    """A case whose walk faults late: the last bytes of vCPU 3's table are unmapped, or lie in a
    read-only slot (then only writes fault)."""
    c = make_case(seed)
    gpa, data, _ = c.slots[0]
    cut = 3 * 0x10000 + 2040  # vCPU 3's bytes for INTIDs >= 16320 are beyond the cut
    c.slots = [(gpa, data[:cut].copy(), False)]
    if kind == "readonly":
        c.slots.append((gpa + cut, data[cut:].copy(), True))
    return c


@pytest.mark.parametrize("impl", [_c_param()])
@pytest.mark.parametrize("kind", ["unmapped", "readonly"])
@pytest.mark.parametrize("order", ["intid", "insertion"])
def test_c_kernel_loop_save_fault_is_kernel_exact(impl, kind, order):
    """Faults stop the walk where the kernel's does; the earlier writes stay, the partial report is
    the kernel's."""
    c = _faulting_case(kind, 51)
    m_ref, pb, l_ref, vpt = c.build()
    ref = bl._reference().ref_save(
        m_ref, pb, l_ref.intid, l_ref.target_vcpu, l_ref.pending_latch, l_ref.hw, vpt, True, order
    )
    assert ref.fault is not None and ref.fault.write == (kind == "readonly")
    assert ref.guest_writes > 1  # writes before the fault are kept
    m_b, pb, l_b, vpt = c.build()
    with pytest.raises(GuestMemoryFault) as ei:
        bl.SAVE_BASELINES[impl](m_b, pb, l_b, vpt=vpt, has_gicv4_1=True, order=order)
    e = ei.value
    assert (e.gpa, e.intid, e.vcpu, e.write) == (ref.fault.gpa, ref.fault.intid, ref.fault.vcpu, ref.fault.write)
    _check_same(e.report, ref, SAVE_FIELDS, f"{impl} partial save vs reference")
    _assert_mem_equal(m_b, m_ref, f"{impl} partial save vs reference")


@pytest.mark.parametrize("impl", [_c_param()])
@pytest.mark.parametrize("kind", ["unmapped", "readonly"])
def test_c_kernel_loop_restore_fault_is_kernel_exact(impl, kind):
    c = _faulting_case(kind, 52)
    m_ref, pb, l_ref, _ = c.build()
    ref = bl._reference().ref_sync_pending_status(m_ref, pb, l_ref.intid, l_ref.target_vcpu, l_ref.pending_latch)
    assert ref.fault is not None and ref.fault.write == (kind == "readonly")
    m_b, pb, l_b, _ = c.build()
    with pytest.raises(GuestMemoryFault) as ei:
        bl.RESTORE_BASELINES[impl](m_b, pb, l_b)
    e = ei.value
    assert (e.gpa, e.intid, e.vcpu, e.write) == (ref.fault.gpa, ref.fault.intid, ref.fault.vcpu, ref.fault.write)
    _check_same(e.report, ref, SYNC_FIELDS, f"{impl} partial restore vs reference")
    np.testing.assert_array_equal(np.asarray(e.report.lpi_errno), np.asarray(ref.lpi_errno))
    np.testing.assert_array_equal(l_b.pending_latch.astype(bool), l_ref.pending_latch.astype(bool))
    _assert_mem_equal(m_b, m_ref, f"{impl} partial restore vs reference")


@pytest.mark.parametrize("impl", [_c_param()])
def test_c_kernel_loop_keeps_the_dirty_log_and_reports_only_this_walk(impl):
    """Every write marks its page in the memory's dirty log (which keeps earlier pages until
    cleared), while the report lists only the pages this walk wrote; repeated calls agree with the
    reference (the C side's scratch is left clean)."""
    c = make_case(61, split=True)
    m_ref, pb, l_ref, vpt = c.build()
    m_b, _, l_b, _ = c.build()
    m_ref.write(0x4000_0000, np.ones(1, np.uint8))  # an earlier write elsewhere, logged
    m_b.write(0x4000_0000, np.ones(1, np.uint8))
    for k in range(3):
        l_ref.pending_latch[:] = np.random.default_rng(k).random(len(l_ref)) < 0.5
        l_b.pending_latch[:] = l_ref.pending_latch
        ref = bl.python_save(m_ref, pb, l_ref, vpt=vpt, has_gicv4_1=True)
        got = bl.SAVE_BASELINES[impl](m_b, pb, l_b, vpt=vpt, has_gicv4_1=True)
        _check_same(got, ref, SAVE_FIELDS, f"{impl} call {k}")
        _assert_mem_equal(m_b, m_ref, f"{impl} call {k}")
        assert 0x4000_0000 >> 12 in m_b.dirty_pages()
        assert got.guest_writes > 0 and got.dirty_pages.size < m_b.dirty_pages().size + 1


# ------------------------------------------------------- the roofline's byte counts (roofline.py)
def test_roofline_touch_counts_match_a_real_save():
    """The lines benchmarks/roofline.py says a save must read and write back are the lines a save
    really reads and really changes (host addresses, 64-byte lines)."""
    import roofline

    import vlpi.scenarios as scen

    h = scen.build_host(vms=2, vcpus=8, id_bits=14, gic="v4.1", seed=5)
    touch = roofline.save_touch(h.jobs, True)
    lines_read = lines_changed = 0
    for vm in h.vms:
        slot = vm.mem.slots[0]
        host0 = slot.data.ctypes.data
        before = slot.data.copy()
        # 8 vCPUs round-robin over INTIDs 8192..16383: every byte 1024..2047 of each table is used
        for b in (vm.pendbaser & np.uint64(bl.PENDBASER_ADDRESS_MASK)).astype(np.int64) - slot.gpa:
            lo, hi = host0 + int(b) + 1024, host0 + int(b) + 2047
            lines_read += hi // 64 - lo // 64 + 1
        vlpi_save = bl.numpy_save(vm.mem, vm.pendbaser, vm.lpis, vpt=vm.vpt, has_gicv4_1=True)
        assert vlpi_save.bytes_changed > 0
        changed = np.flatnonzero(slot.data != before) + host0
        lines_changed += np.unique(changed // 64).size
    assert touch["pt_lines_read"] == lines_read
    assert touch["pt_lines_written"] == lines_changed
    assert touch["n_lpis"] == h.n_lpis and touch["state_bytes"] == 2 * h.n_lpis // 8
    assert 0 < touch["vpt_lines_read"] <= sum(vm.vpt.nbytes // 64 + 1 for vm in h.vms)
    assert touch["bytes_touched"] == touch["read_only_bytes"] + touch["written_bytes"]
    h.randomize(5)
    assert roofline.save_touch(h.jobs, False)["vpt_lines_read"] == 0  # GICv3 semantics: no VPT


def test_c_kernel_loop_without_a_compiler_is_unavailable_with_the_reason(tmp_path):
    """No C compiler: the baseline says why (the benchmarks skip it with that reason)."""
    import subprocess

    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    code = f"import sys; sys.path.insert(0, {bench!r}); import cbaseline; print(cbaseline.unavailable_reason())"
    env = dict(os.environ, CC=str(tmp_path / "no-such-cc"), VLPI_CBUILD_DIR=str(tmp_path / "build"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "c_kernel_loop" in out.stdout and "no C compiler" in out.stdout and "no-such-cc" in out.stdout
