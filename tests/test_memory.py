"""Unit tests of vlpi.GuestMemory: memslots, faults, read-only slots, the dirty-page log, and the
vectorised/kernel helpers the engine relies on (checked against a byte-dict model)."""

from __future__ import annotations

import numpy as np
import pytest

from vlpi import GuestMemory, GuestMemoryFault
from vlpi.memory import GPA_LIMIT, PAGE_SIZE


def test_lazy_zero_slot_and_returned_array_is_the_backing_store():
    mem = GuestMemory()
    arr = mem.add_slot(0x4000_0000, 1 << 30)  # 1 GiB, costs nothing until written
    assert arr.dtype == np.uint8 and arr.size == 1 << 30
    assert mem.read(0x4000_0000 + 12345, 4).tolist() == [0, 0, 0, 0]
    mem.write(0x4000_0000 + 7, [1, 2])
    assert arr[7:9].tolist() == [1, 2]


def test_data_used_in_place_never_copied():
    buf = np.arange(64, dtype=np.uint8)
    mem = GuestMemory()
    out = mem.add_slot(0x1001, data=buf)  # size taken from data, odd GPA
    assert np.shares_memory(out, buf)
    mem.write(0x1001 + 3, [0xEE])
    assert buf[3] == 0xEE
    buf[4] = 0x77  # direct writes are visible (and not logged)
    assert mem.read(0x1001 + 4, 1)[0] == 0x77
    assert mem.dirty_pages().tolist() == [1]


def test_2d_data_is_viewed_flat():
    buf = np.zeros((4, 16), np.uint8)
    mem = GuestMemory()
    mem.add_slot(0, data=buf)
    mem.write(17, [5])
    assert buf[1, 1] == 5


def test_read_and_write_span_adjacent_slots():
    mem = GuestMemory()
    a = mem.add_slot(0x1000, 0x10)
    b = mem.add_slot(0x1010, 0x10)
    mem.write(0x100E, [1, 2, 3, 4])
    assert a[-2:].tolist() == [1, 2] and b[:2].tolist() == [3, 4]
    assert mem.read(0x100E, 4).tolist() == [1, 2, 3, 4]


def test_read_fault_names_first_unmapped_byte():
    mem = GuestMemory()
    mem.add_slot(0x1000, 0x10)
    with pytest.raises(GuestMemoryFault) as ei:
        mem.read(0x100C, 8)
    e = ei.value
    assert (e.gpa, e.write, e.errno) == (0x1010, False, 14)
    assert isinstance(e, OSError)
    with pytest.raises(GuestMemoryFault):
        mem.read(GPA_LIMIT, 1)
    assert mem.read(0x5000, 0).size == 0  # empty read never faults


def test_write_checks_whole_range_first():
    mem = GuestMemory()
    a = mem.add_slot(0x1000, 0x10)
    ro = mem.add_slot(0x1010, 0x10, readonly=True)
    with pytest.raises(GuestMemoryFault) as ei:
        mem.write(0x100E, [9, 9, 9, 9])
    assert (ei.value.gpa, ei.value.write) == (0x1010, True)
    assert a[-2:].tolist() == [0, 0] and ro[:2].tolist() == [0, 0]
    assert mem.dirty_pages().size == 0
    with pytest.raises(GuestMemoryFault) as ei:
        mem.write(0x100F, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])  # runs off the end
    assert a[-1] == 0
    assert mem.read(0x1010, 2).tolist() == [0, 0]  # read-only slots are readable


def test_dirty_log_pages():
    mem = GuestMemory()
    mem.add_slot(0x0FFE, 3 * PAGE_SIZE)  # not page aligned
    mem.write(0x0FFF, [1, 2])  # spans pages 0 and 1
    mem.write(0x3000, [0])  # same value as before: still dirty (KVM logs writes, not changes)
    assert mem.dirty_pages().tolist() == [0, 1, 3]
    mem.clear_dirty()
    assert mem.dirty_pages().size == 0
    mem.write_u8([0x2001, 0x2002, 0x1005], [1, 1, 1])
    assert mem.dirty_pages().tolist() == [1, 2]


def test_dirty_log_shared_page_between_slots_and_removal():
    mem = GuestMemory()
    mem.add_slot(0x1000, 0x800)
    mem.add_slot(0x1800, 0x800)  # same page 1
    mem.write(0x1900, [1])
    assert mem.dirty_pages().tolist() == [1]
    mem.remove_slot(0x1800)  # its dirty log goes with it
    assert mem.dirty_pages().size == 0
    with pytest.raises(ValueError, match="0x1900"):
        mem.remove_slot(0x1900)


def test_slots_sorted_slot_at_and_generation():
    mem = GuestMemory()
    g0 = mem.generation
    mem.add_slot(0x3000, 0x10)
    mem.add_slot(0x1000, 0x10, readonly=True)
    assert [s.gpa for s in mem.slots] == [0x1000, 0x3000]
    assert mem.slot_at(0x100F).readonly and mem.slot_at(0x1010) is None
    assert mem.generation > g0
    g1 = mem.generation
    mem.remove_slot(0x3000)
    assert mem.generation > g1
    assert "ro" in repr(mem)


def _model_and_mem(rng):
    """Random byte-granular slots (some adjacent, some read-only) and a dict model of them."""
    mem = GuestMemory()
    model: dict[int, tuple[int, bool]] = {}
    pos = int(rng.integers(0, 1 << 20))
    for _ in range(int(rng.integers(1, 6))):
        pos += int(rng.choice([0, 0, 1, 5, 4096]))  # 0: adjacent
        size = int(rng.integers(1, 300))
        ro = bool(rng.random() < 0.3)
        data = rng.integers(0, 256, size, dtype=np.uint8)
        mem.add_slot(pos, size, readonly=ro, data=data)
        for k in range(size):
            model[pos + k] = (int(data[k]), ro)
        pos += size
    return mem, model


@pytest.mark.parametrize("seed", range(30))
def test_vectorised_helpers_against_byte_model(seed):
    rng = np.random.default_rng([31, seed])
    mem, model = _model_and_mem(rng)
    lo, hi = min(model) - 8, max(model) + 8
    gpas = rng.integers(lo, hi, 50).astype(np.uint64)
    # read_u8 == byte-by-byte model (or a fault naming the first bad GPA in the given order)
    bad = [int(g) for g in gpas if int(g) not in model]
    if bad:
        with pytest.raises(GuestMemoryFault) as ei:
            mem.read_u8(gpas)
        assert ei.value.gpa == bad[0]
    else:
        assert mem.read_u8(gpas).tolist() == [model[int(g)][0] for g in gpas]
    # write_u8: fault (nothing written) or later duplicates win
    vals = rng.integers(0, 256, gpas.size, dtype=np.uint8)
    before = [s.data.copy() for s in mem.slots]
    unwritable = [int(g) for g in gpas if int(g) not in model or model[int(g)][1]]
    if unwritable:
        with pytest.raises(GuestMemoryFault) as ei:
            mem.write_u8(gpas, vals)
        assert ei.value.write
        assert all(np.array_equal(b, s.data) for b, s in zip(before, mem.slots, strict=True))
        assert mem.dirty_pages().size == 0
    else:
        mem.write_u8(gpas, vals)
        last = {int(g): int(v) for g, v in zip(gpas, vals, strict=True)}
        for g, v in last.items():
            assert mem.read(g, 1)[0] == v
        assert mem.dirty_pages().tolist() == sorted({g >> 12 for g in last})
    # _covered (used by the engine to decide that no access can fault) == brute force
    for _ in range(40):
        a = int(rng.integers(lo, hi))
        b = a + int(rng.integers(0, 40))
        for writable in (False, True):
            want = all(g in model and not (writable and model[g][1]) for g in range(a, b + 1))
            got = bool(mem.covered(np.array([a], np.uint64), np.array([b], np.uint64), writable)[0])
            assert got == want, (a, b, writable)


def test_fault_is_picklable_with_its_fields():
    import pickle

    e = GuestMemoryFault(0x1234, write=True, intid=8200, vcpu=3, report={"x": 1}, detail="d")
    f = pickle.loads(pickle.dumps(e))
    assert (f.gpa, f.write, f.intid, f.vcpu, f.report, f.errno) == (0x1234, True, 8200, 3, {"x": 1}, 14)
    assert "INTID 8200" in str(e) and "vCPU 3" in str(e) and "0x1234" in str(e)
    assert str(f) == str(e) and f.detail == "d"  # the message survives whole
    e.job, e.reports = 2, ["r0", "r1"]  # as save_pending_tables_many sets them
    g = pickle.loads(pickle.dumps(e))
    assert (g.job, g.reports) == (2, ["r0", "r1"])


def test_add_slot_data_list_names_data():
    """BUG (vlpi/memory.py): add_slot(gpa, data=<list>) with no size reports
    "size must be > 0, got -1" (ValueError) instead of a TypeError naming ``data``.
    Fix: check ``isinstance(data, np.ndarray)`` before deriving ``size`` from it."""
    mem = GuestMemory()
    with pytest.raises(TypeError, match=r"\bdata\b"):
        mem.add_slot(0, data=[1, 2, 3])


def test_extents_merge_adjacent_slots_and_are_read_only():
    from vlpi import GuestMemory

    m = GuestMemory()
    m.add_slot(0x1000, 0x1000)
    m.add_slot(0x2000, 0x800, readonly=True)  # adjacent, read-only
    m.add_slot(0x5000, 0x100)
    st, en = m.extents()
    assert st.tolist() == [0x1000, 0x5000] and en.tolist() == [0x2800, 0x5100]
    st, en = m.extents(writable=True)
    assert st.tolist() == [0x1000, 0x5000] and en.tolist() == [0x2000, 0x5100]
    assert not st.flags.writeable and not en.flags.writeable
