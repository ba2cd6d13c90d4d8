"""Unit tests of vlpi.LPITable: compact dtypes, in-place flags, read-only INTID/target arrays,
set_targets and its cache invalidation, validation messages."""

from __future__ import annotations

import numpy as np
import pytest

from vlpi import LPITable


def test_compact_dtypes_and_nbytes():
    t = LPITable(np.arange(8192, 8192 + 100, dtype=np.int64), np.arange(100) % 4)
    assert t.intid.dtype == np.uint32 and t.target_vcpu.dtype == np.int8
    assert t.pending_latch.dtype == np.bool_ and t.hw.dtype == np.bool_
    assert not t.pending_latch.any() and not t.hw.any()
    assert t.nbytes == 7 * 100
    assert (len(t), t.max_target, t.max_intid, t.min_intid) == (100, 3, 8291, 8192)


@pytest.mark.parametrize(
    ("max_target", "dtype"), [(-1, np.int8), (126, np.int8), (127, np.int16), (32766, np.int16), (32767, np.int32)]
)
def test_target_dtype_is_the_narrowest_that_fits(max_target, dtype):
    t = LPITable([8192, 8193], [-1, max_target])
    assert t.target_vcpu.dtype == dtype and t.target_vcpu.tolist() == [-1, max_target]


def test_set_targets_widens_the_dtype_and_keeps_values():
    t = LPITable([8192, 8193, 8194], [0, 5, -1])
    t.set_targets([2], 300)
    assert t.target_vcpu.dtype == np.int16 and t.target_vcpu.tolist() == [0, 5, 300]
    t.set_targets([0], 70000)
    assert t.target_vcpu.dtype == np.int32 and t.target_vcpu.tolist() == [70000, 5, 300]
    assert t.max_target == 70000


def test_wide_targets_use_int32():
    t = LPITable([8192, 8193], [0, 40000])
    assert t.target_vcpu.dtype == np.int32 and t.max_target == 40000
    assert t.target_vcpu.tolist() == [0, 40000]


def test_empty_table():
    t = LPITable([], [])
    assert len(t) == 0 and t.max_target == -1 and "0 LPIs" in repr(t)


def test_intid_and_target_are_read_only_copies():
    intid = np.array([8192, 8193])
    t = LPITable(intid, [0, -1])
    intid[0] = 9999
    assert t.intid[0] == 8192
    with pytest.raises(ValueError):
        t.intid[0] = 8200
    with pytest.raises(ValueError):
        t.target_vcpu[0] = 1


@pytest.mark.parametrize("dtype", [bool, np.uint8])
def test_flags_used_in_place(dtype):
    latch = np.array([0, 1, 0], dtype=dtype)
    hw = np.array([1, 0, 0], dtype=dtype)
    t = LPITable([8192, 8193, 8194], [0, 0, 0], latch, hw)
    assert t.pending_latch is latch and t.hw is hw
    t.pending_latch[0] = 1
    assert latch[0] == 1


def test_flags_copied_when_not_usable_in_place():
    strided = np.zeros(6, bool)[::2]
    t = LPITable([8192, 8193, 8194], [0, 0, 0], strided, [1, 0, 1])  # list and int64 0/1
    assert t.pending_latch is not strided and t.pending_latch.flags.c_contiguous
    assert t.hw.astype(bool).tolist() == [True, False, True]
    ro = np.zeros(3, bool)
    ro.flags.writeable = False
    t2 = LPITable([8192, 8193, 8194], [0, 0, 0], ro)
    assert t2.pending_latch.flags.writeable


@pytest.mark.parametrize("packed", [False, True], ids=["bytes", "packed"])
def test_flag_setters_validate_and_change_nothing_on_error(packed):
    t = LPITable([8192, 8193], [0, 0], [False, True], packed=packed)
    t.pending_latch = [True, False]
    assert t.pending_latch.tolist() == [True, False]
    with pytest.raises(ValueError, match="pending_latch"):
        t.pending_latch = [True]
    with pytest.raises(TypeError, match="hw"):
        t.hw = [0.5, 1.0]
    assert t.pending_latch.tolist() == [True, False] and t.hw.tolist() == [False, False]


def test_set_targets_index_mask_and_invalidation():
    t = LPITable(8192 + np.arange(6), [0, 0, 1, 1, -1, -1])
    t.plan_cache["plan"] = object()
    v0 = t.version
    t.set_targets([4, 5], 2)
    assert t.target_vcpu.tolist() == [0, 0, 1, 1, 2, 2] and t.max_target == 2
    assert t.version == v0 + 1 and "plan" not in t.plan_cache
    t.set_targets(np.array([True, False, True, False, False, False]), [-1, 3])
    assert t.target_vcpu.tolist() == [-1, 0, 3, 1, 2, 2] and t.max_target == 3
    assert not t.target_vcpu.flags.writeable
    t.set_targets(0, 40000)  # widens to int32
    assert t.target_vcpu.dtype == np.int32 and t.target_vcpu[0] == 40000


def test_set_targets_errors():
    t = LPITable(8192 + np.arange(3), [0, 0, 0])
    with pytest.raises(IndexError, match=r"index\[1\]"):
        t.set_targets([0, 3], 1)
    with pytest.raises(ValueError, match=r"vcpu\[0\]"):
        t.set_targets([1], -2)
    with pytest.raises(TypeError, match="vcpu"):
        t.set_targets([1], 1.5)
    with pytest.raises(ValueError, match="mask"):
        t.set_targets(np.array([True, False]), 1)
    assert t.target_vcpu.tolist() == [0, 0, 0] and t.version == 0


def test_copy_is_deep():
    t = LPITable([8192, 8193], [0, 1], [True, False], [False, True])
    c = t.copy()
    c.pending_latch[0] = False
    c.set_targets([0], 5)
    assert t.pending_latch[0] and t.target_vcpu[0] == 0
    assert c.intid.tolist() == t.intid.tolist()


def test_repr_counts():
    t = LPITable([8192, 8193, 8300], [0, -1, 2], [1, 1, 0], [0, 0, 1])
    r = repr(t)
    assert "3 LPIs" in r and "8192..8300" in r and "2 targeted" in r and "2 pending_latch" in r and "1 hw" in r


# ------------------------------------------------------------------ known bugs
@pytest.mark.parametrize("target", [2**31, 2**32, 2**40])
def test_target_beyond_int32_rejected(target):
    """BUG (vlpi/lpi.py): a target_vcpu that does not fit int32 is silently wrapped by
    ``ta.astype(int32)`` (2**32 -> 0, 2**31 -> -2**31) while ``max_target`` keeps the unwrapped
    value; the engine then fails with an IndexError instead of naming ``target_vcpu[i]``.
    Fix: reject ``ta > np.iinfo(np.int32).max`` with ValueError naming the first index."""
    with pytest.raises(ValueError, match=r"target_vcpu\[1\]"):
        LPITable([8192, 8193], [0, target])


def test_set_targets_beyond_int32_rejected():
    """BUG (vlpi/lpi.py): set_targets(i, 2**32) silently stores 0. Same fix as above."""
    t = LPITable([8192, 8193], [0, 1])
    with pytest.raises(ValueError, match=r"vcpu"):
        t.set_targets([0], 2**32)
    assert t.target_vcpu.tolist() == [0, 1]


def test_duplicate_reports_first_offending_index_in_array_order():
    """BUG (vlpi/lpi.py, minor): the duplicate check reports the smallest duplicated *value*,
    not the first offending row: [8200, 8192, 8200, 8192] reports intid[3] although row 2 is
    the first row that repeats an earlier INTID. Fix: ``np.unique(..., return_index=True)`` and
    report the smallest row index not among the first occurrences."""
    with pytest.raises(ValueError, match=r"intid\[2\] = 8200 duplicates intid\[0\]"):
        LPITable([8200, 8192, 8200, 8192], [0, 0, 0, 0])


def test_cache_nbytes_counts_a_shared_plan_once():
    import vlpi

    mem = vlpi.GuestMemory()
    mem.add_slot(0x10000, 0x20000)
    t = LPITable(np.arange(8192, 8192 + 64), np.arange(64) % 2)
    pb = np.array([0x10000, 0x20000], np.uint64)
    vlpi.save_pending_tables(mem, pb, t, order="intid")
    one = t.cache_nbytes
    assert one > 0
    vlpi.save_pending_tables(mem, pb, t, order="insertion")  # no aliased bits: the same plan serves both
    assert t.cache_nbytes == one
