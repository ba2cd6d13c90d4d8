"""The word-at-a-time paths of the run kernel agree with the literal reference.

The run kernel merges whole 64-bit guest words for two layouts: runs whose LPIs sit alone in their
words at one bit (round-robin targets over a multiple of 64 vCPUs) and runs of consecutive rows
owning consecutive INTIDs (a dense table, blocked targets). Word boundaries depend on where guest
memory and the VPT lie in *host* memory, so these layouts are built with slots and VPTs placed at
odd host offsets as well as aligned ones, with row strides that are and are not multiples of 64,
with VPTs that end right after the last LPI, and with read-only memory the save must not write.
Each case is compared (bytes, counts, dirty pages, pending_latch after restore) with the
reference, which goes through the public 1-byte memory API one LPI at a time.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import reference as ref
from test_engine_layouts import check_restore, check_save, clone_memory
from test_hostile_engine import run_isolated

import vlpi

pytestmark = pytest.mark.engine

BASE = 0x8000_0000
STRIDE = 1 << 16


def _host_array(n: int, offset: int, rng) -> np.ndarray:
    """``n`` random bytes starting ``offset`` bytes into a fresh buffer (so their host address
    has the given alignment relative to 8-byte words)."""
    buf = rng.integers(0, 256, n + 64, dtype=np.uint8)
    return buf[offset : offset + n]


def _layout(kind: str, seed: int = 0, slot_offset: int = 0, vpt_offset: int = 0):
    rng = np.random.default_rng(seed)
    id_bits = 14
    n_vcpus = 64
    vpt_bytes = (1 << id_bits) // 8
    if kind == "rr64":  # one LPI per word at one bit, rows 64 apart: the vectorised loop
        intid = np.arange(8192, 1 << id_bits)
        target = (intid - 8192) % 64
    elif kind == "rr128":  # words 2 apart: the one-LPI-per-iteration word loop
        id_bits, n_vcpus = 15, 128
        vpt_bytes = (1 << id_bits) // 8
        intid = np.arange(8192, 1 << id_bits)
        target = (intid - 8192) % 128
    elif kind == "rr64_row_stride_3":  # vCPU 0: INTID step 64 at row step 3; others fill the gaps
        n0 = 120
        intid0 = 8192 + 64 * np.arange(n0)
        others = np.setdiff1d(np.arange(8192, 1 << id_bits), intid0)
        rng.shuffle(others)
        intid = np.empty(3 * n0, np.int64)
        intid[0::3] = intid0
        intid[1::3] = others[:n0]
        intid[2::3] = others[n0 : 2 * n0]
        target = np.where(np.arange(intid.size) % 3 == 0, 0, 1 + (np.arange(intid.size) % 5))
    elif kind == "dense":  # one vCPU owns every INTID in row order: 64 LPIs per word
        intid = np.arange(8192, 1 << id_bits)
        target = np.zeros_like(intid)
        n_vcpus = 2
    elif kind == "blocked":  # four vCPUs, each a contiguous block of INTIDs
        intid = np.arange(8192, 1 << id_bits)
        target = (intid - 8192) * 4 // intid.size
        n_vcpus = 4
    elif kind == "dense_narrow_vpt":  # the VPT ends right after the last hw LPI
        intid = np.arange(8192, 8192 + 3000)
        target = np.zeros_like(intid)
        n_vcpus = 1
        vpt_bytes = (8192 + 3000 + 7) // 8
    else:
        raise AssertionError(kind)
    intid = np.asarray(intid, np.int64)
    target = np.asarray(target, np.int64)
    latch = rng.random(intid.size) < 0.5
    hw = rng.random(intid.size) < 0.5
    vpt = _host_array(n_vcpus * vpt_bytes, vpt_offset, rng).reshape(n_vcpus, vpt_bytes)
    pend = BASE + np.arange(n_vcpus, dtype=np.uint64) * np.uint64(STRIDE)
    mem = vlpi.GuestMemory()
    mem.add_slot(BASE, data=_host_array(STRIDE * n_vcpus, slot_offset, rng))
    return mem, pend, intid, target, latch & ~hw, hw, vpt


KINDS = ["rr64", "rr128", "rr64_row_stride_3", "dense", "blocked", "dense_narrow_vpt"]


@pytest.mark.parametrize("packed", [False, True], ids=["bytes", "packed"])
@pytest.mark.parametrize("offsets", [(0, 0), (3, 5), (7, 1)], ids=["aligned", "odd3_5", "odd7_1"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gic41", [True, False], ids=["v4.1", "v3"])
def test_word_paths_match_the_reference(kind, offsets, gic41, packed):
    """Byte and packed tables. A packed save reads the table's bits in the word loops, and a packed
    restore writes latch bits from them (a lane of a word for rows 64 apart, a 64-bit window for
    consecutive rows)."""
    mem, pend, intid, target, latch, hw, vpt = _layout(kind, slot_offset=offsets[0], vpt_offset=offsets[1])
    if not gic41:
        latch = np.random.default_rng(1).random(intid.size) < 0.5  # hw LPIs save their latch
    lpis = vlpi.LPITable(intid, target, latch.copy(), hw.copy(), packed=packed)
    mref = clone_memory(mem)
    vpt_arg = vpt if gic41 else None
    for order in ("intid", "insertion"):
        check_save(mem, mref, pend, intid, target, lpis, latch, hw, vpt_arg, gic41, order)
        # flip half of the wanted state so the second order has work to do as well
        latch ^= np.random.default_rng(2).random(intid.size) < 0.5
        lpis.set_flags(slice(None), pending_latch=latch)
    # restore into a latch that disagrees everywhere, so every written bit shows
    lpis.set_flags(slice(None), pending_latch=~latch)
    check_restore(mem, mref, pend, intid, target, lpis)
    assert np.array_equal(lpis.hw.astype(bool), hw)  # a restore writes only latch flags


def test_the_fault_scan_and_the_kernel_see_one_flag_snapshot():
    """Where the tables lie in read-only memory, the save scans for accesses that would fault
    before the kernel runs, reading the flags; the kernel must act on the same flags. Flipping the
    caller's arrays between the scan and the kernel (as another thread could) must not make the
    kernel write into the read-only slot that the scan found needs no write."""
    mem, pend, intid, target, latch, hw, vpt = _layout("rr64")
    lpis = vlpi.LPITable(intid, target, latch.copy(), hw.copy())
    vlpi.save_pending_tables(mem, pend, lpis, vpt=vpt, has_gicv4_1=True)  # stored == wanted now
    ro = vlpi.GuestMemory()
    ro.add_slot(BASE, readonly=True, data=mem.slots[0].data.copy())
    before = ro.slots[0].data.copy()
    from vlpi import pending as engine

    real = engine._k.run_units

    def flip_then_run(*a):
        lpis.pending_latch[:] = ~lpis.pending_latch  # the caller's arrays change mid-call
        lpis.hw[:] = ~lpis.hw
        return real(*a)

    serial = engine._SERIAL.copy()
    engine._k.run_units = flip_then_run
    engine._SERIAL[flip_then_run] = flip_then_run
    try:
        got = vlpi.save_pending_tables(ro, pend, lpis, vpt=vpt, has_gicv4_1=True)
    finally:
        engine._k.run_units = real
        engine._SERIAL.clear()
        engine._SERIAL.update(serial)
    assert not np.array_equal(lpis.pending_latch, latch)  # the flip happened
    assert got.guest_writes == 0 and got.dirty_pages.size == 0
    assert np.array_equal(ro.slots[0].data, before)


@pytest.mark.parametrize("kind", ["rr64", "dense"])
def test_nothing_to_write_in_read_only_memory_writes_nothing(kind):
    """A save whose wanted state already matches a read-only slot succeeds without storing a
    byte: the slot is an mmap'ed page range without write permission, so any store (even of an
    unchanged word) would kill the process."""
    body = f"""
        import mmap, numpy as np, vlpi, sys
        sys.path.insert(0, "tests")
        from test_engine_words import _layout
        mem, pend, intid, target, latch, hw, vpt = _layout({kind!r}, slot_offset=3, vpt_offset=5)
        lpis = vlpi.LPITable(intid, target, latch, hw)
        vlpi.save_pending_tables(mem, pend, lpis, vpt=vpt, has_gicv4_1=True)
        data = mem.slots[0].data
        mm = mmap.mmap(-1, data.size + 2 * mmap.PAGESIZE)
        whole = np.frombuffer(mm, np.uint8)
        buf = whole[3 : 3 + data.size]  # odd host offset: words straddle the slot's ends
        buf[:] = data
        import ctypes
        libc = ctypes.CDLL(None)
        PROT_READ = 1
        assert libc.mprotect(ctypes.c_void_p(whole.ctypes.data), ctypes.c_size_t(whole.size), PROT_READ) == 0
        m2 = vlpi.GuestMemory()
        m2.add_slot(mem.slots[0].gpa, readonly=True, data=buf)
        rep = vlpi.save_pending_tables(m2, pend, lpis, vpt=vpt, has_gicv4_1=True)
        assert rep.guest_writes == 0 and rep.dirty_pages.size == 0, rep
        print("OK", rep.guest_reads)
    """
    r = run_isolated(textwrap.dedent(body))
    assert r.returncode == 0 and "OK" in r.stdout, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])


def test_one_table_saved_with_and_without_gicv4_1_in_turn():
    """The flag snapshot is shared by a table's save jobs: a GICv3-style save after a GICv4.1 one
    must not see the hw bits packed for the first (hw LPIs then save their latch)."""
    mem, pend, intid, target, latch, hw, vpt = _layout("rr64")
    latch = np.random.default_rng(3).random(intid.size) < 0.5
    lpis = vlpi.LPITable(intid, target, latch.copy(), hw.copy())
    mref = clone_memory(mem)
    for gic41 in (True, False, True, False):
        v = vpt if gic41 else None
        want = ref.ref_save(mref, pend, intid, target, latch.copy(), hw.copy(), v, gic41, "intid")
        got = vlpi.save_pending_tables(mem, pend, lpis, vpt=v, has_gicv4_1=gic41)
        assert np.array_equal(mem.slots[0].data, mref.slots[0].data), gic41
        assert (got.guest_writes, got.vpt_reads) == (want.guest_writes, want.vpt_reads), gic41
        vpt[:] = np.random.default_rng(4).integers(0, 256, vpt.shape, dtype=np.uint8)
