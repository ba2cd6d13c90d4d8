"""Bad input: one test per kind. Each asserts the exception type, that the message names the
argument (and the first offending index where there is one), and that guest memory (bytes and
dirty log) and ``pending_latch`` are unchanged afterwards.

The memory used here would *fault* on a save (vCPU1's table has no RAM) and holds bits to
restore, so an engine that validated late would change something or raise GuestMemoryFault.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import vlpi
from vlpi import GuestMemory, LPITable

pytestmark = pytest.mark.engine

B0 = 0x8000_0000


def setup(n_vcpus=2, hw=False):
    """vCPU0's table backed (bits set), vCPU1's not; 16 LPIs alternating between them."""
    mem = GuestMemory()
    mem.add_slot(B0, 0x1000)
    mem.write(B0 + 1024, np.full(4, 0xA5, np.uint8))
    mem.clear_dirty()
    mem.write(B0 + 1028, [0xFF])  # some dirty log to preserve
    intid = 8192 + np.arange(16)
    target = np.arange(16) % n_vcpus
    latch = (np.arange(16) % 3 == 0)
    lpis = LPITable(intid, target, latch, np.full(16, hw))
    pend = np.array([B0 + v * 0x10_0000 for v in range(n_vcpus)], dtype=np.uint64)
    return mem, pend, lpis


class Unchanged:
    """Snapshot of memory bytes, dirty log and latch; ``check()`` asserts nothing moved."""

    def __init__(self, mem: GuestMemory, *tables: LPITable):
        self.mem, self.tables = mem, tables
        self.bytes = [s.data.copy() for s in mem.slots]
        self.dirty = mem.dirty_pages().copy()
        self.latch = [np.array(t.pending_latch, copy=True) for t in tables]

    def check(self):
        assert all(np.array_equal(a, s.data) for a, s in zip(self.bytes, self.mem.slots, strict=True))
        assert np.array_equal(self.dirty, self.mem.dirty_pages())
        for t, l0 in zip(self.tables, self.latch, strict=True):
            assert np.array_equal(t.pending_latch, l0)


def rejected(exc, patterns, fn, *args, mem=None, lpis=(), **kw):
    """Call ``fn`` expecting ``exc`` whose message matches every regex in ``patterns``."""
    snap = Unchanged(mem, *lpis) if mem is not None else None
    with pytest.raises(exc) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    for p in patterns:
        assert re.search(p, msg), f"message {msg!r} does not match {p!r}"
    if snap is not None:
        snap.check()
    return ei.value


ALL_OPS = ["save", "save_many", "sync_status", "sync_table"]


def call(op, mem, pend, lpis, **kw):
    if op == "save":
        return vlpi.save_pending_tables(mem, pend, lpis, **kw)
    if op == "save_many":
        return vlpi.save_pending_tables_many([(mem, pend, lpis, kw.pop("vpt", None))], **kw)
    if op == "sync_status":
        return vlpi.sync_pending_status(mem, pend, lpis, **kw)
    return vlpi.sync_pending_table(mem, pend, lpis, kw.pop("vcpu", 0), **kw)


# --------------------------------------------------------------------- pendbaser
@pytest.mark.parametrize("op", ALL_OPS)
def test_pendbaser_float_dtype(op):
    mem, pend, lpis = setup()
    rejected(TypeError, [r"pendbaser"], call, op, mem, pend.astype(float), lpis, mem=mem, lpis=[lpis])


@pytest.mark.parametrize("op", ALL_OPS)
def test_pendbaser_not_1d(op):
    mem, pend, lpis = setup()
    rejected(ValueError, [r"pendbaser"], call, op, mem, pend.reshape(2, 1), lpis, mem=mem, lpis=[lpis])


@pytest.mark.parametrize("op", ALL_OPS)
def test_pendbaser_negative(op):
    mem, pend, lpis = setup()
    bad = pend.astype(np.int64)
    bad[1] = -65536
    rejected(ValueError, [r"pendbaser\[1\]"], call, op, mem, bad, lpis, mem=mem, lpis=[lpis])


@pytest.mark.parametrize("op", ALL_OPS)
def test_pendbaser_too_short_for_target(op):
    mem, _, lpis = setup()
    pend = np.array([B0], dtype=np.uint64)  # LPI row 1 targets vCPU 1
    rejected(ValueError, [r"target_vcpu\[1\]", r"pendbaser"], call, op, mem, pend, lpis, mem=mem, lpis=[lpis])


@pytest.mark.parametrize("op", ALL_OPS)
def test_mem_and_lpis_types(op):
    mem, pend, lpis = setup()
    rejected(TypeError, [r"\bmem\b"], call, op, {"not": "memory"}, pend, lpis, mem=mem, lpis=[lpis])
    rejected(TypeError, [r"\blpis\b"], call, op, mem, pend, {"intid": [8192]}, mem=mem, lpis=[lpis])


# ------------------------------------------------------------------- LPITable
def test_duplicate_intid():
    e = rejected(ValueError, [r"intid\[3\]", r"intid\[1\]", r"unique"], LPITable,
                 [8192, 8193, 8194, 8193], [0, 0, 0, 0])
    assert "8193" in str(e)


@pytest.mark.parametrize(("intid", "index"), [([8192, 8191], 1), ([0, 8192], 0), ([8192, 8193, 1 << 24], 2)])
def test_intid_out_of_range(intid, index):
    rejected(ValueError, [rf"intid\[{index}\]"], LPITable, intid, [0] * len(intid))


def test_intid_float_dtype():
    rejected(TypeError, [r"intid"], LPITable, np.array([8192.0, 8193.0]), [0, 0])


def test_intid_not_1d():
    rejected(ValueError, [r"intid"], LPITable, np.array([[8192, 8193]]), [0, 0])


def test_target_length_mismatch():
    rejected(ValueError, [r"target_vcpu"], LPITable, [8192, 8193], [0])


def test_target_below_minus_one():
    rejected(ValueError, [r"target_vcpu\[1\]"], LPITable, [8192, 8193, 8194], [0, -2, -3])


@pytest.mark.parametrize("name", ["pending_latch", "hw"])
def test_flag_not_zero_one(name):
    kw = {name: np.array([0, 1, 2], dtype=np.uint8)}
    rejected(ValueError, [rf"{name}\[2\]"], LPITable, [8192, 8193, 8194], [0, 0, 0], **kw)


@pytest.mark.parametrize("name", ["pending_latch", "hw"])
def test_flag_wrong_length(name):
    rejected(ValueError, [name], LPITable, [8192, 8193, 8194], [0, 0, 0], **{name: [True, False]})


@pytest.mark.parametrize("op", ALL_OPS)
def test_target_vcpu_beyond_pendbaser(op):
    mem, pend, _ = setup()
    lpis = LPITable([8192, 8193, 8194, 8195], [0, 1, 5, 7])
    rejected(ValueError, [r"target_vcpu\[2\]"], call, op, mem, pend, lpis, mem=mem, lpis=[lpis])


# ----------------------------------------------------------------------- VPT
@pytest.mark.parametrize("op", ["save", "save_many"])
def test_vpt_missing_for_hw_lpi(op):
    mem, pend, _ = setup()
    lpis = LPITable(8192 + np.arange(4), [0, 0, 0, 0], None, [False, False, True, True])
    rejected(ValueError, [r"\bvpt\b", r"hw\[2\]"], call, op, mem, pend, lpis, has_gicv4_1=True,
             mem=mem, lpis=[lpis])
    # without GICv4.1 the VPT is never read: accepted (and the save happens)
    call(op, mem, pend[:1], LPITable(8192 + np.arange(4), [0, 0, 0, 0], None, [0, 0, 1, 1]), has_gicv4_1=False)


@pytest.mark.parametrize("op", ["save", "save_many"])
def test_vpt_too_narrow_for_hw_lpi(op):
    mem, pend, _ = setup()
    lpis = LPITable([8192, 8200, 9000, 8300], [0, 0, 0, 0], None, [True, True, False, True])
    vpt = np.zeros((2, 1030), np.uint8)  # INTID 8300 -> byte 1037: beyond; 9000 is not hw
    rejected(ValueError, [r"\bvpt\b", r"hw\[3\]", r"8300"], call, op, mem, pend, lpis, vpt=vpt, has_gicv4_1=True,
             mem=mem, lpis=[lpis])


@pytest.mark.parametrize("op", ["save", "save_many"])
def test_vpt_wrong_dtype_and_shape(op):
    mem, pend, lpis = setup(hw=True)
    rejected(TypeError, [r"\bvpt\b"], call, op, mem, pend, lpis, vpt=np.zeros((2, 2048), np.int32),
             has_gicv4_1=True, mem=mem, lpis=[lpis])
    rejected(ValueError, [r"\bvpt\b"], call, op, mem, pend, lpis, vpt=np.zeros((3, 2048), np.uint8),
             has_gicv4_1=True, mem=mem, lpis=[lpis])
    rejected(ValueError, [r"\bvpt\b"], call, op, mem, pend, lpis, vpt=np.zeros(2048, np.uint8),
             has_gicv4_1=True, mem=mem, lpis=[lpis])


# ----------------------------------------------------------------- order / vcpu
@pytest.mark.parametrize("op", ["save", "save_many"])
def test_unknown_order(op):
    mem, pend, lpis = setup()
    rejected(ValueError, [r"\border\b", "creation"], call, op, mem, pend, lpis, order="creation",
             mem=mem, lpis=[lpis])


@pytest.mark.parametrize("vcpu", [2, -1, 100])
def test_scan_vcpu_out_of_range(vcpu):
    mem, pend, lpis = setup()
    rejected(ValueError, [r"\bvcpu\b", str(vcpu)], vlpi.sync_pending_table, mem, pend, lpis, vcpu,
             mem=mem, lpis=[lpis])


@pytest.mark.parametrize("vcpu", [True, 1.0, "0"])
def test_scan_vcpu_not_an_integer(vcpu):
    mem, pend, lpis = setup()
    rejected(TypeError, [r"\bvcpu\b"], vlpi.sync_pending_table, mem, pend, lpis, vcpu, mem=mem, lpis=[lpis])


# ------------------------------------------------------------------------ jobs
def test_save_many_jobs_not_a_sequence():
    mem, pend, lpis = setup()
    rejected(TypeError, [r"\bjobs\b"], vlpi.save_pending_tables_many, iter([(mem, pend, lpis, None)]),
             mem=mem, lpis=[lpis])
    rejected(TypeError, [r"\bjobs\b"], vlpi.save_pending_tables_many, "jobs", mem=mem, lpis=[lpis])


def test_save_many_bad_job_shape_names_index_and_writes_nothing():
    mem0, pend0, lpis0 = setup()
    mem1, pend1, lpis1 = setup()
    snap0 = Unchanged(mem0, lpis0)
    rejected(TypeError, [r"jobs\[1\]"], vlpi.save_pending_tables_many,
             [(mem0, pend0[:1], LPITable([8192], [0], [True]), None), (mem1, pend1, lpis1)], mem=mem1, lpis=[lpis1])
    snap0.check()  # job 0 (valid, fault-free) was not saved either


def test_save_many_bad_job_argument_names_job_and_argument():
    mem0, pend0, lpis0 = setup()
    mem1, pend1, lpis1 = setup()
    ok = LPITable([8192], [0], [True])
    snap0 = Unchanged(mem0, ok)
    rejected(ValueError, [r"jobs\[1\]", r"target_vcpu\[1\]"], vlpi.save_pending_tables_many,
             [(mem0, pend0[:1], ok, None), (mem1, pend1[:1], lpis1, None)], mem=mem1, lpis=[lpis1])
    snap0.check()


def test_save_many_shared_memory():
    mem, pend, lpis = setup()
    ok = LPITable([8192], [0], [True])
    rejected(ValueError, [r"jobs\[1\]", r"jobs\[0\]"], vlpi.save_pending_tables_many,
             [(mem, pend[:1], ok, None), (mem, pend[:1], ok, None)], mem=mem, lpis=[ok])


# ---------------------------------------------------------------- GuestMemory
def test_overlapping_slots():
    mem = GuestMemory()
    mem.add_slot(0x1000, 0x1000)
    e = rejected(ValueError, [r"overlap", r"0x1800"], mem.add_slot, 0x1800, 0x1000)
    assert "0x1000" in str(e)
    assert len(mem.slots) == 1
    rejected(ValueError, [r"overlap"], mem.add_slot, 0x0, 0x3000)  # covering it entirely
    rejected(ValueError, [r"overlap"], mem.add_slot, 0x1000, 1)  # same start
    mem.add_slot(0x2000, 0x10)  # adjacent: fine
    mem.add_slot(0xFFF, 1)


@pytest.mark.parametrize(("gpa", "size"), [(1 << 52, 1), ((1 << 52) - 4, 8), (-4096, 4096)])
def test_slot_outside_52_bit_space(gpa, size):
    mem = GuestMemory()
    rejected(ValueError, [r"52-bit"], mem.add_slot, gpa, size)
    assert len(mem.slots) == 0


def test_slot_at_the_very_top_is_fine():
    mem = GuestMemory()
    mem.add_slot((1 << 52) - 16, 16)
    mem.write((1 << 52) - 1, [7])
    assert mem.read((1 << 52) - 1, 1)[0] == 7


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.float32, bool])
def test_slot_data_not_uint8(dtype):
    mem = GuestMemory()
    rejected(TypeError, [r"\bdata\b", "uint8"], mem.add_slot, 0, 16, data=np.zeros(16, dtype))
    assert len(mem.slots) == 0


def test_slot_data_not_contiguous_wrong_size_or_readonly():
    mem = GuestMemory()
    rejected(ValueError, [r"\bdata\b", "contiguous"], mem.add_slot, 0, 16, data=np.zeros(32, np.uint8)[::2])
    rejected(ValueError, [r"\bdata\b"], mem.add_slot, 0, 16, data=np.zeros(17, np.uint8))
    ro = np.zeros(16, np.uint8)
    ro.flags.writeable = False
    rejected(ValueError, [r"\bdata\b", "read-only"], mem.add_slot, 0, 16, data=ro)
    rejected(TypeError, [r"\bdata\b"], mem.add_slot, 0, 16, data=[0] * 16)
    assert len(mem.slots) == 0
    mem.add_slot(0, 16, data=ro, readonly=True)  # fine for a read-only slot


def test_slot_bad_size_and_gpa_types():
    mem = GuestMemory()
    rejected(ValueError, [r"\bsize\b"], mem.add_slot, 0, 0)
    rejected(TypeError, [r"\bgpa\b"], mem.add_slot, 0.0, 16)
    rejected(TypeError, [r"\bsize\b"], mem.add_slot, 0, 16.0)
    rejected(TypeError, [r"\bgpa\b"], mem.add_slot, True, 16)
    assert len(mem.slots) == 0


# ------------------------------------------------------- validation before faulting
@pytest.mark.parametrize("atomic", [True, False])
def test_bad_argument_wins_over_a_fault(atomic):
    """The setup's save would fault (vCPU1's table has no RAM); a bad VPT must still be reported
    as a ValueError, with nothing written (validation comes first, also kernel-exact mode)."""
    mem, pend, lpis = setup(hw=True)
    rejected(ValueError, [r"\bvpt\b"], vlpi.save_pending_tables, mem, pend, lpis, vpt=np.zeros((2, 8), np.uint8),
             has_gicv4_1=True, atomic=atomic, mem=mem, lpis=[lpis])
