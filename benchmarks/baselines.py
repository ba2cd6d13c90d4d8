"""Baselines for the pending-table engine: same call, same result, different machinery.

Each ``*_save`` function has the signature of :func:`vlpi.save_pending_tables`::

    f(mem, pendbaser, lpis, *, vpt=None, has_gicv4_1=False, order="intid") -> SaveReport

and produces the same final guest bytes, dirty log and report counts (``lpis_total``,
``lpis_skipped``, ``guest_reads``, ``guest_writes``, ``vpt_reads``, ``bytes_changed``,
``vpes_unmapped``, ``vpes_remapped``, ``dirty_pages``) as the engine with ``atomic=True``.
``tests/test_baselines.py`` checks that on small scenarios, so a benchmark ratio always compares
implementations that agree.

* ``numpy``     -- the best plain-NumPy vectorisation (no numba). Walk order cached per LPITable
  (as the engine caches its plans); disjoint vCPU tables take a sort-free path, aliasing tables a
  stable sort on (GPA, bit) that replays the kernel's write-through byte cache exactly.
* ``bitarray``  -- each vCPU's pending table is a ``bitarray.bitarray`` (LSB-first): gather the
  stored bits, xor with the wanted bits, scatter, write the table back. Counts that depend on the
  interleaving of vCPUs in the walk (``guest_reads``) come from the NumPy walk. Falls back to the
  NumPy baseline when vCPU tables alias or do not sit in one writable memslot each.
* ``python``    -- the literal per-LPI reference, ``tests/reference.py`` (``ref_save``).
* ``kernel_loop`` -- the lead's compiled literal port, ``vlpi.pending.kernel_loop_save``.
* ``c_kernel_loop`` -- the kernel's loop in plain C (``-O2 -march=native``), built on first use
  and called through ctypes (``benchmarks/cbaseline.py``); unavailable without a C compiler.

Restore (``sync_pending_status``) and the EnableLPIs scan (``sync_pending_table``) have NumPy and
pure-Python baselines too (``numpy_restore``, ``python_restore``, ``numpy_scan``, ``python_scan``);
restore also has both kernel loops (``kernel_loop_restore``, ``c_kernel_loop_restore``).

Baselines do not validate input beyond what they need; give them what the engine accepts.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import cbaseline
import numpy as np

from vlpi import GuestMemory, GuestMemoryFault, LPITable

__all__ = [
    "PENDBASER_ADDRESS_MASK",
    "SAVE_BASELINES",
    "RESTORE_BASELINES",
    "SCAN_BASELINES",
    "numpy_save",
    "bitarray_save",
    "python_save",
    "kernel_loop_save",
    "c_kernel_loop_save",
    "numpy_restore",
    "python_restore",
    "kernel_loop_restore",
    "c_kernel_loop_restore",
    "numpy_scan",
    "python_scan",
    "report_types",
]

#: GICR_PENDBASER_ADDRESS(x) = x & GENMASK(51, 16)
PENDBASER_ADDRESS_MASK = np.uint64(((1 << 52) - 1) & ~((1 << 16) - 1))
PAGE_SHIFT = 12
_TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


# ----------------------------------------------------------------------------- reports
@dataclass
class _SaveReport:
    """Stand-in for ``vlpi.SaveReport`` while the engine is not importable (same fields)."""

    lpis_total: int = 0
    lpis_skipped: int = 0
    guest_reads: int = 0
    guest_writes: int = 0
    vpt_reads: int = 0
    bytes_changed: int = 0
    vpes_unmapped: int = 0
    vpes_remapped: int = 0
    dirty_pages: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    elapsed_s: float = 0.0


@dataclass
class _SyncReport:
    """Stand-in for ``vlpi.SyncReport`` (same fields)."""

    lpis_total: int = 0
    lpis_synced: int = 0
    guest_reads: int = 0
    guest_writes: int = 0
    lpi_errno: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    dirty_pages: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    elapsed_s: float = 0.0


def report_types() -> tuple[type, type]:
    """``(SaveReport, SyncReport)``: the engine's classes if importable, else the stand-ins."""
    try:
        from vlpi import SaveReport, SyncReport  # type: ignore[attr-defined]
    except ImportError:
        return _SaveReport, _SyncReport
    return SaveReport, SyncReport


def _make(cls: type, **kw: Any) -> Any:
    """Build a report; tolerate report classes with extra (defaulted) or fewer fields."""
    try:
        return cls(**kw)
    except TypeError:
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set(kw)
        return cls(**{k: v for k, v in kw.items() if k in names})


# ------------------------------------------------------------------------ plans (cached)
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class _Walk:
    """Targeted LPIs in walk order (what the kernel's loop visits)."""

    rows: np.ndarray  # intp row indices into the LPITable
    intid: np.ndarray  # uint64
    target: np.ndarray  # intp
    n_skipped: int
    # per-vCPU grouping for the bitarray baseline (filled lazily)
    by_vcpu: list | None = None


def _walk(lpis: LPITable, order: str) -> _Walk:
    if order not in ("intid", "insertion"):
        raise ValueError(f"order must be 'intid' or 'insertion', got {order!r}")
    per = _PLANS.setdefault(lpis, {})
    key = (order, lpis.version)
    w = per.get(key)
    if w is None:
        per.clear()
        tgt = np.asarray(lpis.target_vcpu)
        intid = np.asarray(lpis.intid)
        if order == "intid":
            walk = np.argsort(intid, kind="stable")
            walk = walk[tgt[walk] >= 0]
        else:
            walk = np.flatnonzero(tgt >= 0)
        w = _Walk(
            rows=walk.astype(np.intp),
            intid=intid[walk].astype(np.uint64),
            target=tgt[walk].astype(np.intp),
            n_skipped=int(len(lpis) - walk.size),
        )
        per[key] = w
    return w


def _pendbaser(pendbaser) -> np.ndarray:
    pb = np.asarray(pendbaser)
    if pb.ndim != 1:
        raise ValueError(f"pendbaser must be 1-D, got shape {pb.shape}")
    return pb.astype(np.uint64, copy=False)


def _check_targets(lpis: LPITable, pb: np.ndarray) -> None:
    if lpis.max_target >= pb.size:
        row = int(np.flatnonzero(np.asarray(lpis.target_vcpu) >= pb.size)[0])
        raise ValueError(f"target_vcpu[{row}] = {int(lpis.target_vcpu[row])} but pendbaser has only {pb.size} vCPUs")


# ------------------------------------------------------------------ guest memory access
class _Slots:
    """Resolve GPAs to (slot, offset) with the public memslot list, without per-byte calls."""

    def __init__(self, mem: GuestMemory) -> None:
        self.slots = mem.slots
        self.starts = np.array([s.gpa for s in self.slots], dtype=np.uint64)
        self.ends = np.array([s.end for s in self.slots], dtype=np.uint64)
        self.ro = np.array([s.readonly for s in self.slots], dtype=bool)

    def resolve(self, gpa: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slot index, offset, ok) per GPA; ok is False where no slot maps the byte."""
        if gpa.size == 0 or not self.slots:
            z = np.zeros(gpa.shape, dtype=np.intp)
            return z, z, np.zeros(gpa.shape, dtype=bool)
        if len(self.slots) == 1:
            s0 = self.starts[0]
            ok = (gpa >= s0) & (gpa < self.ends[0])
            return np.zeros(gpa.shape, dtype=np.intp), (gpa - s0).astype(np.intp), ok
        idx = np.searchsorted(self.starts, gpa, side="right") - 1
        ok = idx >= 0
        idx = np.where(ok, idx, 0)
        ok &= gpa < self.ends[idx]
        return idx, (gpa - self.starts[idx]).astype(np.intp), ok

    def gather(self, sidx: np.ndarray, off: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Byte values (0 where not ok)."""
        if len(self.slots) == 1:
            if ok.all():
                return self.slots[0].data[off]
            out = np.zeros(off.shape, dtype=np.uint8)
            out[ok] = self.slots[0].data[off[ok]]
            return out
        out = np.zeros(off.shape, dtype=np.uint8)
        for si in np.unique(sidx[ok]):
            sel = ok & (sidx == si)
            out[sel] = self.slots[si].data[off[sel]]
        return out

    def per_slot(self, sidx: np.ndarray):
        """Yield (slot, selector or None for 'all') for the slots present in ``sidx``."""
        if len(self.slots) == 1:
            yield self.slots[0], None
            return
        for si in np.unique(sidx):
            yield self.slots[si], sidx == si

    def mark_dirty(self, sidx: np.ndarray, off: np.ndarray) -> np.ndarray:
        """Log the written bytes' pages in the slots' dirty logs; return sorted unique page numbers."""
        if off.size == 0:
            return np.zeros(0, dtype=np.int64)
        out = []
        for s, sel in self.per_slot(sidx):
            o = off if sel is None else off[sel]
            pages = _unique_small(((o + (s.gpa & 0xFFF)) >> PAGE_SHIFT).astype(np.int64))
            s.dirty[pages] = True
            out.append(pages + s.page0)
        return out[0] if len(out) == 1 else np.unique(np.concatenate(out))


def _unique_small(x: np.ndarray) -> np.ndarray:
    """Sorted unique values of an int64 array; a bincount when the value range is small."""
    if x.size == 0:
        return x
    lo, hi = int(x.min()), int(x.max())
    if hi - lo <= 4 * x.size + 4096:
        return np.flatnonzero(np.bincount(x - lo, minlength=hi - lo + 1)) + lo
    return np.unique(x)


def _raise_first_fault(walk: _Walk, gpa: np.ndarray, read_bad: np.ndarray, write_bad: np.ndarray) -> None:
    """Raise GuestMemoryFault for the first faulting access in walk order (reads before writes of
    the same LPI), as the atomic engine does, before anything is written."""
    r = int(np.argmax(read_bad)) if read_bad.any() else gpa.size
    w = int(np.argmax(write_bad)) if write_bad.any() else gpa.size
    if r == gpa.size and w == gpa.size:
        return
    k, is_write = (r, False) if r <= w else (w, True)
    raise GuestMemoryFault(
        int(gpa[k]),
        write=is_write,
        intid=int(walk.intid[k]),
        vcpu=int(walk.target[k]),
        detail="baseline: fault found before any write (atomic)",
    )


# --------------------------------------------------------------------------- shared bits
def _tables_disjoint(pb: np.ndarray, walk: _Walk) -> bool:
    """True when the byte ranges the walk touches in different vCPUs' tables cannot overlap
    (conservative: every used vCPU gets the global INTID range). Then (GPA, bit) is unique per
    targeted LPI and no bit is visited twice."""
    if walk.intid.size == 0:
        return True
    used = np.flatnonzero(np.bincount(walk.target, minlength=pb.size))
    bases = np.sort(pb[used] & PENDBASER_ADDRESS_MASK)
    if bases.size < 2:
        return True
    span = np.uint64(int(walk.intid.max()) // 8 - int(walk.intid.min()) // 8)
    return bool(np.all(bases[1:] - bases[:-1] > span))


def _wanted(lpis: LPITable, walk: _Walk, vpt, has_gicv4_1: bool) -> tuple[np.ndarray, int]:
    """Per walked LPI: the state to save (pending_latch, or the VPT bit for hw LPIs on GICv4.1)."""
    wanted = np.asarray(lpis.pending_latch)[walk.rows].astype(bool)
    n_vpt = 0
    if has_gicv4_1:
        hw = np.asarray(lpis.hw)[walk.rows].astype(bool)
        n_vpt = int(np.count_nonzero(hw))
        if n_vpt:
            if vpt is None:
                row = int(walk.rows[np.argmax(hw)])
                raise ValueError(f"vpt is required: LPI row {row} is hw and has_gicv4_1 is set")
            vpt = np.asarray(vpt)
            ih = walk.intid[hw]
            byte = (ih >> np.uint64(3)).astype(np.intp)
            if int(byte.max()) >= vpt.shape[1]:
                k = int(np.argmax(byte >= vpt.shape[1]))
                raise ValueError(
                    f"vpt: hw LPI row {int(walk.rows[hw][k])} (INTID {int(ih[k])}) needs VPT byte "
                    f"{int(byte[k])} but vpt has {vpt.shape[1]} bytes per vPE"
                )
            bit = (ih & np.uint64(7)).astype(np.uint8)
            wanted[hw] = (vpt[walk.target[hw], byte] >> bit) & 1
    return wanted, n_vpt


def _count_reads(gpa: np.ndarray) -> int:
    """The kernel's 1-byte GPA-keyed cache: a read whenever the GPA differs from the previous one."""
    if gpa.size == 0:
        return 0
    return 1 + int(np.count_nonzero(gpa[1:] != gpa[:-1]))


def _gpa_bit(pb: np.ndarray, walk: _Walk) -> tuple[np.ndarray, np.ndarray]:
    base = pb[walk.target] & PENDBASER_ADDRESS_MASK
    gpa = base + (walk.intid >> np.uint64(3))
    bit = (walk.intid & np.uint64(7)).astype(np.uint8)
    return gpa, bit


def _vpes(pb: np.ndarray, has_gicv4_1: bool) -> int:
    return int(pb.size) if has_gicv4_1 else 0


# ------------------------------------------------------------------------------ numpy
@dataclass
class _Layout:
    """Everything of a NumPy save that depends only on the LPIs' INTIDs/targets, the PENDBASERs
    and the memslots (cached like the engine's plans): addresses, byte runs, flags."""

    walk: _Walk
    identity: bool  # walk.rows == arange(n): per-LPI arrays need no gather
    slot: Any  # the one writable memslot holding every accessed byte, else None (general path)
    off: np.ndarray  # intp offset in that slot per walked LPI
    bit: np.ndarray  # uint8
    reads: int  # walk positions where the GPA changes (the kernel's reads)
    perm: np.ndarray | None  # walk positions grouped by byte (None: the walk already groups them)
    starts: np.ndarray  # first position of each distinct byte (in perm order)
    singles: bool  # one LPI per byte
    run_off: np.ndarray  # slot offset per distinct byte
    run_page: np.ndarray  # absolute 4 KiB page per distinct byte
    vflat: dict  # vpt_bytes -> (flat VPT index per walked LPI, max VPT byte)
    bitpos: tuple | None = None  # bitarray baseline: (lo, hi, bit positions as a list, byte offsets)


def _layout(mem: GuestMemory, pb: np.ndarray, lpis: LPITable, order: str) -> _Layout | None:
    """The cached fast-path layout, or None when the general path is needed (aliasing tables,
    unmapped or read-only bytes, tables spread over several slots)."""
    per = _PLANS.setdefault(lpis, {})
    key = ("layout", order, lpis.version, pb.tobytes(), id(mem), mem.generation)
    if key in per:
        return per[key]
    for k in [k for k in per if k[0] == "layout"]:
        del per[k]
    walk = _walk(lpis, order)
    lay = None
    if _tables_disjoint(pb, walk):
        gpa, bit = _gpa_bit(pb, walk)
        slots = _Slots(mem)
        sidx, off, ok = slots.resolve(gpa)
        one = gpa.size == 0 or bool(ok.all() and sidx.min() == sidx.max())
        if one and slots.slots and not slots.ro[int(sidx[0]) if sidx.size else 0]:
            slot = slots.slots[int(sidx[0]) if sidx.size else 0]
            first = np.ones(gpa.size, dtype=bool)
            first[1:] = gpa[1:] != gpa[:-1]
            starts = np.flatnonzero(first)
            reads = int(starts.size)
            run_gpa = gpa[starts]
            if order == "intid":
                dup = False  # a byte's LPIs lie within 8 consecutive walk positions
                for k in range(1, 8):
                    if run_gpa.size > k and bool(np.any(run_gpa[k:] == run_gpa[:-k])):
                        dup = True
                        break
            else:
                dup = np.unique(run_gpa).size != run_gpa.size
            perm = None
            if dup:  # a byte's LPIs are not consecutive in the walk: group them by byte
                perm = np.argsort(gpa, kind="stable")
                sg = gpa[perm]
                first = np.ones(sg.size, dtype=bool)
                first[1:] = sg[1:] != sg[:-1]
                starts = np.flatnonzero(first)
                run_gpa = sg[starts]
                off_g = off[perm]
            else:
                off_g = off
            n = len(lpis)
            lay = _Layout(
                walk=walk,
                identity=walk.rows.size == n and bool(np.all(walk.rows == np.arange(n))),
                slot=slot,
                off=off,
                bit=bit,
                reads=reads,
                perm=perm,
                starts=starts,
                singles=starts.size == gpa.size,
                run_off=off_g[starts],
                run_page=(run_gpa >> np.uint64(PAGE_SHIFT)).astype(np.int64),
                vflat={},
            )
    per[key] = lay
    return lay


def _fast_wanted(lay: _Layout, lpis: LPITable, vpt, has_gicv4_1: bool):
    """(wanted uint8 0/1 per walked LPI, vpt_reads) with the cached layout, or None when the
    general path must decide (missing VPT, an LPI beyond the VPT: it raises the exact error)."""
    walk = lay.walk
    latch = np.asarray(lpis.pending_latch)
    latch = latch if lay.identity else latch[walk.rows]
    wanted = latch.view(np.uint8) if latch.dtype in (np.bool_, np.uint8) else latch.astype(np.uint8)
    n_vpt = 0
    if has_gicv4_1:
        hw = np.asarray(lpis.hw)
        hw = hw if lay.identity else hw[walk.rows]
        hw = hw.view(bool) if hw.dtype in (np.bool_, np.uint8) else hw.astype(bool)
        n_vpt = int(np.count_nonzero(hw))
        if n_vpt:
            if vpt is None:
                return None
            vpt = np.ascontiguousarray(vpt)
            vb = vpt.shape[1]
            if vb not in lay.vflat:
                byte = (walk.intid >> np.uint64(3)).astype(np.int64)
                lay.vflat[vb] = (walk.target * vb + np.minimum(byte, vb - 1), int(byte.max()) if byte.size else -1)
            vflat, vmax = lay.vflat[vb]
            if vmax >= vb:  # some LPI lies beyond the VPT: exact check (raises if it is a hw one)
                return None
            vbit = (vpt.reshape(-1)[vflat] >> lay.bit) & np.uint8(1)
            wanted = np.where(hw, vbit, wanted)
    return wanted, n_vpt


def numpy_save(
    mem: GuestMemory, pendbaser, lpis: LPITable, *, vpt=None, has_gicv4_1: bool = False, order: str = "intid"
):
    """Plain-NumPy ``save_pending_tables`` (see the module docstring). Returns a SaveReport.

    Fast path (disjoint tables in one writable slot, the usual case): a handful of whole-array
    passes -- gather the stored bytes, compare with the wanted bits, OR the changed bits of each
    byte together, store every byte once. Layout (addresses, runs) is cached per
    LPITable/PENDBASERs/memslots, as the engine caches its plans. Anything else (aliasing tables,
    faults, read-only or several slots) takes the general path, which replays the kernel's
    write-through byte cache exactly.
    """
    t0 = time.perf_counter()
    pb = _pendbaser(pendbaser)
    _check_targets(lpis, pb)
    if order not in ("intid", "insertion"):
        raise ValueError(f"order must be 'intid' or 'insertion', got {order!r}")
    lay = _layout(mem, pb, lpis, order)
    if lay is None:
        return _numpy_save_general(mem, pb, lpis, vpt=vpt, has_gicv4_1=has_gicv4_1, order=order, t0=t0)
    SaveReport, _ = report_types()
    walk = lay.walk
    fw = _fast_wanted(lay, lpis, vpt, has_gicv4_1)
    if fw is None:
        return _numpy_save_general(mem, pb, lpis, vpt=vpt, has_gicv4_1=has_gicv4_1, order=order, t0=t0)
    wanted, n_vpt = fw
    data = lay.slot.data
    old = data[lay.off]
    changed = ((old >> lay.bit) & np.uint8(1)) ^ wanted  # 1 where the stored bit differs
    mask = changed << lay.bit
    if lay.perm is not None:
        mask, old = mask[lay.perm], old[lay.perm]
    if lay.singles:
        run_mask, run_old = mask, old
    else:  # bits of one byte are distinct (disjoint tables): OR them together
        run_mask = np.bitwise_or.reduceat(mask, lay.starts) if mask.size else mask
        run_old = old[lay.starts]
    data[lay.run_off] = run_old ^ run_mask  # every byte once (unchanged ones rewrite their value)
    hit = run_mask != 0
    bytes_changed = int(np.count_nonzero(hit))
    pages = _unique_small(lay.run_page[hit])
    if pages.size:
        lay.slot.dirty[pages - lay.slot.page0] = True
    return _make(
        SaveReport,
        lpis_total=len(lpis),
        lpis_skipped=walk.n_skipped,
        guest_reads=lay.reads,
        guest_writes=int(np.count_nonzero(changed)),
        vpt_reads=n_vpt,
        bytes_changed=bytes_changed,
        vpes_unmapped=_vpes(pb, has_gicv4_1),
        vpes_remapped=_vpes(pb, has_gicv4_1),
        dirty_pages=pages,
        elapsed_s=time.perf_counter() - t0,
    )


def _numpy_save_general(
    mem: GuestMemory, pb: np.ndarray, lpis: LPITable, *, vpt, has_gicv4_1: bool, order: str, t0: float
):
    """The general NumPy path: any layout, aliasing tables, faults (raised before any write)."""
    SaveReport, _ = report_types()
    walk = _walk(lpis, order)
    wanted, n_vpt = _wanted(lpis, walk, vpt, has_gicv4_1)
    gpa, bit = _gpa_bit(pb, walk)
    reads = _count_reads(gpa)
    slots = _Slots(mem)
    sidx, off, ok = slots.resolve(gpa)
    cur = (slots.gather(sidx, off, ok) >> bit) & 1
    cur = cur.astype(bool)
    disjoint = _tables_disjoint(pb, walk)

    if disjoint:
        changed = cur != wanted
        if not ok.all() or slots.ro.any():
            _raise_first_fault(walk, gpa, ~ok, changed & ok & slots.ro[sidx])
        writes = int(np.count_nonzero(changed))
        c_sidx, c_off, c_bit, c_gpa = sidx[changed], off[changed], bit[changed], gpa[changed]
        # each (byte, bit) at most once: flip the changed bits, one bit position per pass
        for s, sel in slots.per_slot(c_sidx):
            o = c_off if sel is None else c_off[sel]
            b = c_bit if sel is None else c_bit[sel]
            for k in range(8):
                m = b == k
                if m.any():
                    s.data[o[m]] ^= np.uint8(1 << k)
        # distinct bytes with >= 1 flipped bit (they all changed value: bits are distinct)
        if order == "intid":
            # in INTID order the LPIs of one byte lie within 8 consecutive walk positions
            dup = np.zeros(c_gpa.size, dtype=bool)
            for k in range(1, 8):
                dup[k:] |= c_gpa[k:] == c_gpa[:-k]
            bytes_changed = int(c_gpa.size - np.count_nonzero(dup))
        else:
            bytes_changed = int(np.unique(c_gpa).size)
        dirty = slots.mark_dirty(c_sidx, c_off)
    else:
        # Aliasing tables: replay the write-through cache per (GPA, bit) in walk order. The first
        # visit of a bit sees the original value, every later one the value the previous visit left.
        key = (gpa << np.uint64(3)) | bit.astype(np.uint64)
        s_ord = np.argsort(key, kind="stable")
        ks = key[s_ord]
        first = np.ones(ks.size, dtype=bool)
        first[1:] = ks[1:] != ks[:-1]
        ws = wanted[s_ord]
        prev = cur[s_ord].copy()
        prev[1:] = np.where(first[1:], prev[1:], ws[:-1])
        ch_s = prev != ws
        changed = np.empty_like(ch_s)
        changed[s_ord] = ch_s
        if not ok.all() or slots.ro.any():
            _raise_first_fault(walk, gpa, ~ok, changed & ok & slots.ro[sidx])
        writes = int(np.count_nonzero(changed))
        last = np.ones(ks.size, dtype=bool)
        last[:-1] = first[1:]
        lk = s_ord[last]  # walk positions holding each bit's final value
        u_gpa = np.unique(gpa[lk])
        u_sidx, u_off, _ = slots.resolve(u_gpa)
        before = slots.gather(u_sidx, u_off, np.ones(u_gpa.size, dtype=bool))
        for s, sel in slots.per_slot(sidx[lk]):
            pos = lk if sel is None else lk[sel]
            for k in range(8):
                m = bit[pos] == k
                if m.any():
                    o = off[pos[m]]
                    v = wanted[pos[m]].astype(np.uint8) << np.uint8(k)
                    s.data[o] = (s.data[o] & np.uint8(0xFF ^ (1 << k))) | v
        after = slots.gather(u_sidx, u_off, np.ones(u_gpa.size, dtype=bool))
        bytes_changed = int(np.count_nonzero(before != after))
        dirty = slots.mark_dirty(sidx[changed], off[changed])

    return _make(
        SaveReport,
        lpis_total=len(lpis),
        lpis_skipped=walk.n_skipped,
        guest_reads=reads,
        guest_writes=writes,
        vpt_reads=n_vpt,
        bytes_changed=bytes_changed,
        vpes_unmapped=_vpes(pb, has_gicv4_1),
        vpes_remapped=_vpes(pb, has_gicv4_1),
        dirty_pages=dirty,
        elapsed_s=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------- bitarray
def bitarray_save(
    mem: GuestMemory, pendbaser, lpis: LPITable, *, vpt=None, has_gicv4_1: bool = False, order: str = "intid"
):
    """``save_pending_tables`` with the pending tables held as a ``bitarray``.

    Usual case (disjoint tables in one writable slot): the VM's touched byte range is one
    little-endian bitarray sharing the slot's memory (``bitarray(buffer=...)``, no copy); gather
    the stored bits of every LPI (a cached position list), xor with the wanted bits
    (``guest_writes``), scatter the wanted bits in place (changed bytes logged dirty).
    Otherwise per vCPU, each table's touched range its own bitarray;
    falls back to :func:`numpy_save` when vCPU tables alias or a table range is not inside one
    writable slot. The wanted bits and the read count come from NumPy (as for the NumPy baseline).
    """
    from bitarray import bitarray

    t0 = time.perf_counter()
    SaveReport, _ = report_types()
    pb = _pendbaser(pendbaser)
    _check_targets(lpis, pb)
    if order not in ("intid", "insertion"):
        raise ValueError(f"order must be 'intid' or 'insertion', got {order!r}")
    lay = _layout(mem, pb, lpis, order)
    fw = _fast_wanted(lay, lpis, vpt, has_gicv4_1) if lay is not None else None
    if fw is not None:
        # the whole touched byte range of the VM's memslot as one bitarray (LSB-first)
        wanted, n_vpt = fw
        if lay.bitpos is None:
            lo = int(lay.run_off.min()) if lay.run_off.size else 0
            hi = int(lay.run_off.max()) + 1 if lay.run_off.size else 0
            lay.bitpos = (lo, hi, ((lay.off - lo) * 8 + lay.bit).tolist(), (lay.run_off - lo))
        lo, hi, pos, run_rel = lay.bitpos
        raw = lay.slot.data[lo:hi]
        before = raw[run_rel]  # the LPIs' bytes, for bytes_changed and the dirty log
        table = bitarray(buffer=raw, endian="little")  # shares guest memory: no copy
        want = bitarray(endian="little")
        want.frombytes(np.packbits(wanted, bitorder="little").tobytes())
        del want[wanted.size :]
        stored = table[pos]
        writes = (stored ^ want).count()
        table[pos] = want  # writes the LPIs' bits in place; other bits are never touched
        del table
        hit = raw[run_rel] != before
        pages = _unique_small(lay.run_page[hit])
        if pages.size:
            lay.slot.dirty[pages - lay.slot.page0] = True
        return _make(
            SaveReport,
            lpis_total=len(lpis),
            lpis_skipped=lay.walk.n_skipped,
            guest_reads=lay.reads,
            guest_writes=int(writes),
            vpt_reads=n_vpt,
            bytes_changed=int(np.count_nonzero(hit)),
            vpes_unmapped=_vpes(pb, has_gicv4_1),
            vpes_remapped=_vpes(pb, has_gicv4_1),
            dirty_pages=pages,
            elapsed_s=time.perf_counter() - t0,
        )
    walk = _walk(lpis, order)
    if not _tables_disjoint(pb, walk):
        return numpy_save(mem, pb, lpis, vpt=vpt, has_gicv4_1=has_gicv4_1, order=order)
    if walk.by_vcpu is None:
        # per vCPU: rows in INTID order, first table byte used, LSB-first bit positions (as lists)
        grp = np.lexsort((walk.intid, walk.target))
        tg = walk.target[grp]
        cuts = np.flatnonzero(np.diff(tg)) + 1
        by = []
        for part in np.split(grp, cuts) if grp.size else []:
            v = int(walk.target[part[0]])
            ii = walk.intid[part]
            lo = int(ii[0]) // 8
            hi = int(ii[-1]) // 8
            by.append((v, part, lo, hi - lo + 1, (ii - np.uint64(lo * 8)).astype(np.int64).tolist()))
        walk.by_vcpu = by
    wanted, n_vpt = _wanted(lpis, walk, vpt, has_gicv4_1)
    lay = _layout(mem, pb, lpis, order)  # cached: the read count depends only on the layout
    reads = lay.reads if lay is not None else _count_reads(_gpa_bit(pb, walk)[0])

    # locate every table range first: any problem -> the NumPy path raises/handles it exactly
    slots = _Slots(mem)
    ranges = []
    for v, _part, lo, nbytes, _pos in walk.by_vcpu:
        start = int(pb[v] & PENDBASER_ADDRESS_MASK) + lo
        si, o, okk = slots.resolve(np.array([start, start + nbytes - 1], dtype=np.uint64))
        if not (okk.all() and si[0] == si[1]) or slots.ro[si[0]]:
            return numpy_save(mem, pb, lpis, vpt=vpt, has_gicv4_1=has_gicv4_1, order=order)
        ranges.append((slots.slots[int(si[0])], int(o[0])))

    writes = 0
    bytes_changed = 0
    dirty_parts = []
    for (_v, part, _lo, nbytes, pos), (slot, o0) in zip(walk.by_vcpu, ranges, strict=True):
        raw = slot.data[o0 : o0 + nbytes]
        table = bitarray(endian="little")
        table.frombytes(raw.tobytes())
        want = bitarray(endian="little")
        want.frombytes(np.packbits(wanted[part], bitorder="little").tobytes())
        del want[part.size :]
        stored = table[pos]
        writes += (stored ^ want).count()
        table[pos] = want
        new = np.frombuffer(table.tobytes(), dtype=np.uint8)
        diff = np.flatnonzero(new != raw)
        if diff.size:
            bytes_changed += int(diff.size)
            raw[diff] = new[diff]
            pages = np.unique((diff + o0 + (slot.gpa & 0xFFF)) >> PAGE_SHIFT)
            slot.dirty[pages] = True
            dirty_parts.append(pages + slot.page0)
    dirty = np.unique(np.concatenate(dirty_parts)).astype(np.int64) if dirty_parts else np.zeros(0, np.int64)
    return _make(
        SaveReport,
        lpis_total=len(lpis),
        lpis_skipped=walk.n_skipped,
        guest_reads=reads,
        guest_writes=writes,
        vpt_reads=n_vpt,
        bytes_changed=bytes_changed,
        vpes_unmapped=_vpes(pb, has_gicv4_1),
        vpes_remapped=_vpes(pb, has_gicv4_1),
        dirty_pages=dirty,
        elapsed_s=time.perf_counter() - t0,
    )


# -------------------------------------------------------------------- pure Python (h1)
def _reference():
    """Import ``tests/reference.py`` (tests/ is not a package)."""
    if _TESTS_DIR not in sys.path:
        sys.path.insert(0, _TESTS_DIR)
    import reference  # type: ignore[import-not-found]

    return reference


def _ref_fault(res, pb_size: int) -> None:
    if res.fault is not None:
        f = res.fault
        raise GuestMemoryFault(f.gpa, write=f.write, intid=f.intid, vcpu=f.vcpu, report=res)


def python_save(
    mem: GuestMemory, pendbaser, lpis: LPITable, *, vpt=None, has_gicv4_1: bool = False, order: str = "intid"
):
    """The literal per-LPI reference (``tests/reference.py:ref_save``) behind the engine's signature.

    Kernel-exact on faults (earlier writes are kept), unlike the atomic engine.
    """
    t0 = time.perf_counter()
    SaveReport, _ = report_types()
    res = _reference().ref_save(
        mem, pendbaser, lpis.intid, lpis.target_vcpu, lpis.pending_latch, lpis.hw, vpt, has_gicv4_1, order
    )
    _ref_fault(res, len(pendbaser))
    return _make(
        SaveReport,
        lpis_total=res.lpis_total,
        lpis_skipped=res.lpis_skipped,
        guest_reads=res.guest_reads,
        guest_writes=res.guest_writes,
        vpt_reads=res.vpt_reads,
        bytes_changed=res.bytes_changed,
        vpes_unmapped=res.vpes_unmapped,
        vpes_remapped=res.vpes_remapped,
        dirty_pages=res.dirty_pages,
        elapsed_s=time.perf_counter() - t0,
    )


def python_restore(mem: GuestMemory, pendbaser, lpis: LPITable):
    """``tests/reference.py:ref_sync_pending_status`` behind the engine's signature."""
    t0 = time.perf_counter()
    _, SyncReport = report_types()
    res = _reference().ref_sync_pending_status(mem, pendbaser, lpis.intid, lpis.target_vcpu, lpis.pending_latch)
    _ref_fault(res, len(pendbaser))
    return _make(
        SyncReport,
        lpis_total=res.lpis_total,
        lpis_synced=res.lpis_synced,
        guest_reads=res.guest_reads,
        guest_writes=res.guest_writes,
        lpi_errno=res.lpi_errno,
        dirty_pages=res.dirty_pages,
        elapsed_s=time.perf_counter() - t0,
    )


def python_scan(mem: GuestMemory, pendbaser, lpis: LPITable, vcpu: int):
    """``tests/reference.py:ref_sync_pending_table`` behind the engine's signature."""
    t0 = time.perf_counter()
    _, SyncReport = report_types()
    res = _reference().ref_sync_pending_table(mem, pendbaser, lpis.intid, lpis.target_vcpu, lpis.pending_latch, vcpu)
    _ref_fault(res, len(pendbaser))
    return _make(
        SyncReport,
        lpis_total=res.lpis_total,
        lpis_synced=res.lpis_synced,
        guest_reads=res.guest_reads,
        guest_writes=res.guest_writes,
        lpi_errno=np.zeros(res.lpis_total, dtype=np.int32),
        dirty_pages=res.dirty_pages,
        elapsed_s=time.perf_counter() - t0,
    )


# ------------------------------------------------------------------ kernel loop (lead)
def kernel_loop_save(
    mem: GuestMemory, pendbaser, lpis: LPITable, *, vpt=None, has_gicv4_1: bool = False, order: str = "intid"
):
    """The lead's compiled literal port of the kernel loop (``vlpi.pending.kernel_loop_save``)."""
    from vlpi.pending import kernel_loop_save as f  # type: ignore[attr-defined]

    return f(mem, pendbaser, lpis, vpt=vpt, has_gicv4_1=has_gicv4_1, order=order)


def kernel_loop_restore(mem: GuestMemory, pendbaser, lpis: LPITable):
    """The lead's compiled literal port of the restore loop (``vlpi.pending.kernel_loop_restore``)."""
    from vlpi.pending import kernel_loop_restore as f  # type: ignore[attr-defined]

    return f(mem, pendbaser, lpis)


# --------------------------------------------------------------- kernel loop in plain C
def c_kernel_loop_save(
    mem: GuestMemory, pendbaser, lpis: LPITable, *, vpt=None, has_gicv4_1: bool = False, order: str = "intid"
):
    """The kernel's save loop in plain C via ctypes (``benchmarks/cbaseline.py``). Kernel-exact on faults."""
    return cbaseline.c_kernel_loop_save(mem, pendbaser, lpis, vpt=vpt, has_gicv4_1=has_gicv4_1, order=order)


def c_kernel_loop_restore(mem: GuestMemory, pendbaser, lpis: LPITable):
    """The kernel's restore sync in plain C via ctypes (``benchmarks/cbaseline.py``). Kernel-exact."""
    return cbaseline.c_kernel_loop_restore(mem, pendbaser, lpis)


# ----------------------------------------------------------------------- numpy restore
def numpy_restore(mem: GuestMemory, pendbaser, lpis: LPITable):
    """Plain-NumPy ``sync_pending_status`` (array order, no cache, clear each consumed bit).

    Only the first visit of a (GPA, bit) in array order can see a 1: it clears it, so later
    aliases read 0. Faults raise before anything is changed (atomic), at the first faulting access.
    Disjoint tables in one writable slot take a cached-layout fast path (as :func:`numpy_save`).
    """
    t0 = time.perf_counter()
    _, SyncReport = report_types()
    pb = _pendbaser(pendbaser)
    _check_targets(lpis, pb)
    lay = _layout(mem, pb, lpis, "insertion")
    if lay is not None:
        # fast path (disjoint tables, one writable slot): every bit is read once, before any
        # clearing write to it, so status = stored bit; clear the set bits byte by byte
        walk = lay.walk
        data = lay.slot.data
        old = data[lay.off]
        status = (old >> lay.bit) & np.uint8(1)
        pl = lpis.pending_latch
        if lay.identity:
            pl[:] = status
        else:
            pl[walk.rows] = status
        mask = status << lay.bit
        if lay.perm is not None:
            mask, old = mask[lay.perm], old[lay.perm]
        if lay.singles:
            run_mask, run_old = mask, old
        else:
            run_mask = np.bitwise_or.reduceat(mask, lay.starts) if mask.size else mask
            run_old = old[lay.starts]
        data[lay.run_off] = run_old & ~run_mask
        pages = _unique_small(lay.run_page[run_mask != 0])
        if pages.size:
            lay.slot.dirty[pages - lay.slot.page0] = True
        return _make(
            SyncReport,
            lpis_total=len(lpis),
            lpis_synced=int(walk.rows.size),
            guest_reads=int(walk.rows.size),
            guest_writes=int(np.count_nonzero(status)),
            lpi_errno=np.zeros(len(lpis), dtype=np.int32),
            dirty_pages=pages,
            elapsed_s=time.perf_counter() - t0,
        )
    walk = _walk(lpis, "insertion")
    gpa, bit = _gpa_bit(pb, walk)
    slots = _Slots(mem)
    sidx, off, ok = slots.resolve(gpa)
    status = ((slots.gather(sidx, off, ok) >> bit) & 1).astype(bool)
    if not _tables_disjoint(pb, walk):
        key = (gpa << np.uint64(3)) | bit.astype(np.uint64)
        _, first = np.unique(key, return_index=True)
        keep = np.zeros(key.size, dtype=bool)
        keep[first] = True
        status &= keep
    if not ok.all() or slots.ro.any():
        _raise_first_fault(walk, gpa, ~ok, status & ok & slots.ro[sidx])
    pl = lpis.pending_latch
    pl[walk.rows] = status
    c_sidx, c_off, c_bit = sidx[status], off[status], bit[status]
    for s, sel in slots.per_slot(c_sidx):
        o = c_off if sel is None else c_off[sel]
        b = c_bit if sel is None else c_bit[sel]
        for k in range(8):
            m = b == k
            if m.any():
                s.data[o[m]] &= np.uint8(0xFF ^ (1 << k))
    dirty = slots.mark_dirty(c_sidx, c_off)
    return _make(
        SyncReport,
        lpis_total=len(lpis),
        lpis_synced=int(walk.rows.size),
        guest_reads=int(walk.rows.size),
        guest_writes=int(np.count_nonzero(status)),
        lpi_errno=np.zeros(len(lpis), dtype=np.int32),
        dirty_pages=dirty,
        elapsed_s=time.perf_counter() - t0,
    )


# ------------------------------------------------------------------------- numpy scan
def numpy_scan(mem: GuestMemory, pendbaser, lpis: LPITable, vcpu: int):
    """Plain-NumPy ``sync_pending_table`` (EnableLPIs scan of ``vcpu``'s table; never writes).

    On a fault the LPIs walked before it keep their new ``pending_latch`` (kernel-exact; the scan
    never writes guest memory, so there is nothing to roll back) and GuestMemoryFault is raised.
    """
    t0 = time.perf_counter()
    _, SyncReport = report_types()
    pb = _pendbaser(pendbaser)
    intid_all = np.asarray(lpis.intid)
    per = _PLANS.setdefault(lpis, {})
    key = ("scan", lpis.version)
    order = per.get(key)
    if order is None:
        order = np.argsort(intid_all, kind="stable")
        per[key] = order
    ii = intid_all[order].astype(np.uint64)
    boff = ii >> np.uint64(3)
    first = np.ones(boff.size, dtype=bool)
    first[1:] = boff[1:] != boff[:-1]  # the byte-offset cache: one read per new offset
    base = pb[vcpu] & PENDBASER_ADDRESS_MASK
    gpa = base + boff
    slots = _Slots(mem)
    sidx, off, ok = slots.resolve(gpa)
    n = ii.size
    stop = n if ok.all() else int(np.argmax(~ok))
    val = slots.gather(sidx, off, ok)
    mine = np.asarray(lpis.target_vcpu)[order] == vcpu
    upd = mine.copy()
    upd[stop:] = False
    bits = ((val >> (ii & np.uint64(7)).astype(np.uint8)) & 1).astype(bool)
    lpis.pending_latch[order[upd]] = bits[upd]
    reads = int(np.count_nonzero(first[: stop + 1 if stop < n else n]))
    rep = _make(
        SyncReport,
        lpis_total=len(lpis),
        lpis_synced=int(np.count_nonzero(upd)),
        guest_reads=reads,
        guest_writes=0,
        lpi_errno=np.zeros(len(lpis), dtype=np.int32),
        dirty_pages=np.zeros(0, dtype=np.int64),
        elapsed_s=time.perf_counter() - t0,
    )
    if stop < n:
        raise GuestMemoryFault(int(gpa[stop]), intid=int(ii[stop]), vcpu=int(vcpu), report=rep)
    return rep


#: name -> save function; the registry the benchmarks and tests/test_baselines.py iterate over
SAVE_BASELINES = {
    "kernel_loop": kernel_loop_save,
    "c_kernel_loop": c_kernel_loop_save,
    "numpy": numpy_save,
    "bitarray": bitarray_save,
    "python": python_save,
}
RESTORE_BASELINES = {
    "kernel_loop": kernel_loop_restore,
    "c_kernel_loop": c_kernel_loop_restore,
    "numpy": numpy_restore,
    "python": python_restore,
}
SCAN_BASELINES = {
    "numpy": numpy_scan,
    "python": python_scan,
}


def unavailable_reason(name: str) -> str | None:
    """Why a baseline cannot run in this checkout (None if it can)."""
    try:
        if name == "kernel_loop":
            from vlpi.pending import kernel_loop_restore, kernel_loop_save  # noqa: F401
        elif name == "c_kernel_loop":
            return cbaseline.unavailable_reason()
        elif name == "python":
            _reference()
        elif name == "bitarray":
            import bitarray  # noqa: F401
    except ImportError as e:
        return f"baseline {name!r} not importable: {e}"
    return None
