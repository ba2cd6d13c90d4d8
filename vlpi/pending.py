"""The pending-table engine: save, restore and scan LPI pending state in guest RAM.

Public functions validate their arguments (raising ``TypeError``/``ValueError`` that name the
argument and the first offending index, before anything changes), then hand cached, compact
plans to private Numba kernels (:mod:`vlpi._kernels.pending`).

How a save is computed
----------------------
The kernel's loop (``vgic_v3_save_pending_tables``) walks LPIs in INTID order, reads a guest byte whenever the address
changes, and writes one byte per changed bit. Its final memory does not depend on how the work is
scheduled: each (byte, bit) ends up holding the wanted state of the *last* LPI mapped to it in
walk order, and bits with no LPI are untouched. Its access counts depend only on the static layout
(reads) and on the wanted-versus-stored comparison (writes). vlpi therefore:

1. builds once, per LPI table and PENDBASER set, a *plan*: the targeted LPIs sorted by
   (guest address, bit, walk order), compressed into runs (see :mod:`vlpi._kernels.pending`);
   the number of reads the kernel's GPA-keyed cache would issue is computed with it;
2. on every call, walks the plan in memory order, reading each guest byte once, merging every
   LPI's wanted bit (``pending_latch``, or the VPT bit for hw LPIs on GICv4.1), counting the
   kernel's writes (one per changed bit, in order within a bit), and writing the byte once if it
   changed -- a whole 64-bit word at a time where the layout allows (one LPI per word at one bit,
   or 64 consecutive LPIs per word); work units never share a byte, so all VMs of a host run in
   one parallel pass;
3. if some access could fault (an address outside every memslot, a read-only slot), finds the
   kernel's first faulting access in walk order first: with ``atomic=True`` (default) it raises
   before writing anything; with ``atomic=False`` it runs the literal sequential walk
   (:mod:`vlpi._kernels.kernel_loop`) so the partial result is the kernel's, byte for byte.

Restore (``sync_pending_status``) and the EnableLPIs scan (``sync_pending_table``)
follow the same pattern.

Safety
------
Kernels reach guest RAM, LPI arrays and plans through raw addresses, so nothing they read may
change behind the engine's back: slots are frozen and change only through ``add_slot``/
``remove_slot``; ``intid``/``target_vcpu`` are immutable; cached plans are keyed on the memory's
generation, the PENDBASER bytes and the table's target version; a save reads the flag bytes
once, into a bit snapshot that the fault scan and the kernel both use (any nonzero byte is True;
flags are never used as numbers in an address); VPT indices are validated or clamped.
Each call holds the locks of its memories and LPI tables from validation to the end of the
kernel, so a slot change in another thread waits for it. ``VLPI_RAW_CHECK=1`` checks every
raw-address access of the kernels against the memory validated for the call (CI runs the
engine tests in that mode).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from vlpi._kernels import _jit
from vlpi._kernels import kernel_loop as _kl
from vlpi._kernels import pending as _k
from vlpi._typing import BoolArray, BoolLike, I32Array, I64Array, IntLike, U8Array, U64Array
from vlpi.errors import GuestMemoryFault
from vlpi.lpi import LPITable, flag_word_count
from vlpi.memory import PAGE_SHIFT, GuestMemory, KernelTables

__all__ = [
    "SaveReport",
    "SyncReport",
    "save_pending_tables",
    "save_pending_tables_many",
    "sync_pending_status",
    "sync_pending_table",
    "kernel_loop_save",
    "kernel_loop_restore",
    "PENDBASER_ADDRESS_MASK",
    "ORDERS",
]

PENDBASER_ADDRESS_MASK = 0x000F_FFFF_FFFF_0000  # GICR_PENDBASER bits [51:16]
ORDERS = ("intid", "insertion")

_MAX_RUN = 8192  # entries per run before a split (at a byte boundary)
_MIN_STRIDED = 4  # shortest arithmetic progression stored as a strided run
_UNIT = 32768  # target entries per parallel work unit

# One VM's arguments of save_pending_tables_many: (mem, pendbaser, lpis, vpt).
_JobArgs: TypeAlias = tuple[GuestMemory, npt.ArrayLike, LPITable, np.ndarray | None]
# (row index, is_write, gpa) of a faulting access
_Fault: TypeAlias = tuple[int, bool, int]
# The unit kernels: (vmt, units, out_pages, out_cnt, scratch, restore, pack) -> collect()'s
# (counts [n_jobs, 4], pages, offsets [n_jobs + 1]).
_UnitsKernel: TypeAlias = Callable[
    [U64Array, I64Array, U64Array, I64Array, U8Array, BoolLike, BoolLike], tuple[I64Array, I64Array, I64Array]
]


# ===================================================================== reports
@dataclass(slots=True)
class SaveReport:
    """What a pending-table save did (counts are the kernel loop's, see the contract).

    Attributes
    ----------
    lpis_total, lpis_skipped : int
        LPIs in the table; LPIs skipped because they have no target vCPU.
    guest_reads, guest_writes, vpt_reads : int
        1-byte guest reads (GPA-keyed cache), 1-byte guest writes (one per changed bit) and VPT
        bit reads the kernel's loop issues, including a faulting access.
    bytes_changed : int
        Distinct guest bytes whose final value differs from their initial value.
    vpes_unmapped, vpes_remapped : int
        vPEs unmapped before the walk and mapped back after it (GICv4.1 only).
    dirty_pages : numpy.ndarray
        Sorted unique 4 KiB guest page numbers written.
    elapsed_s : float
        Wall time of the call.

    Notes
    -----
    A plain result owned by the caller: the engine keeps no reference to it, so it may be changed
    or shared between threads freely (``dirty_pages`` is read-only: it may be shared).
    """

    lpis_total: int
    lpis_skipped: int
    guest_reads: int
    guest_writes: int
    vpt_reads: int
    bytes_changed: int
    vpes_unmapped: int
    vpes_remapped: int
    dirty_pages: I64Array = field(repr=False)
    elapsed_s: float = 0.0

    def __repr__(self) -> str:
        # every field under its attribute name; arrays as <dtype array, size>, never as a bare count
        p = self.dirty_pages
        return (
            f"SaveReport(lpis_total={self.lpis_total}, lpis_skipped={self.lpis_skipped}, "
            f"guest_reads={self.guest_reads}, guest_writes={self.guest_writes}, vpt_reads={self.vpt_reads}, "
            f"bytes_changed={self.bytes_changed}, vpes_unmapped={self.vpes_unmapped}, "
            f"vpes_remapped={self.vpes_remapped}, dirty_pages=<{p.dtype} array, {p.size} page{'s' * (p.size != 1)}>, "
            f"elapsed_s={self.elapsed_s:.6f})"
        )


@dataclass(slots=True)
class SyncReport:
    """What a restore sync (``sync_pending_status``) or EnableLPIs scan did.

    Attributes
    ----------
    lpis_total : int
        LPIs in the table.
    lpis_synced : int
        LPIs whose ``pending_latch`` was assigned from guest RAM without error.
    guest_reads, guest_writes : int
        1-byte guest accesses the kernel issues (including a faulting one).
    lpi_errno : numpy.ndarray
        int32 per LPI: 0 or ``errno.EFAULT``.
    dirty_pages : numpy.ndarray
        Sorted unique 4 KiB guest page numbers written (restore clears consumed bits).
    elapsed_s : float
        Wall time of the call.

    Notes
    -----
    A plain result owned by the caller: the engine keeps no reference to it, so it may be changed
    or shared between threads freely (``dirty_pages`` is read-only: it may be shared).
    """

    lpis_total: int
    lpis_synced: int
    guest_reads: int
    guest_writes: int
    lpi_errno: I32Array = field(repr=False)
    dirty_pages: I64Array = field(repr=False)
    elapsed_s: float = 0.0

    def __repr__(self) -> str:
        # every field under its attribute name; arrays as <dtype array, size ...>, never as a bare count
        e, p = self.lpi_errno, self.dirty_pages
        return (
            f"SyncReport(lpis_total={self.lpis_total}, lpis_synced={self.lpis_synced}, "
            f"guest_reads={self.guest_reads}, guest_writes={self.guest_writes}, "
            f"lpi_errno=<{e.dtype} array, {e.size} LPI{'s' * (e.size != 1)}, {int(np.count_nonzero(e))} nonzero>, "
            f"dirty_pages=<{p.dtype} array, {p.size} page{'s' * (p.size != 1)}>, elapsed_s={self.elapsed_s:.6f})"
        )


_NO_PAGES = np.zeros(0, dtype=np.int64)
_NO_PAGES.flags.writeable = False


# ===================================================================== plans
class _Plan:
    """Cached memory-order plan of one LPI table for one set of table bases."""

    __slots__ = (
        "runs", "perm_x", "run_lo", "run_hi", "units", "pages_cap", "n_entries", "has_bit_alias",
        "reads", "one_per_byte", "addr_min", "addr_max", "__weakref__",
    )

    def __init__(self, lpis: LPITable, base: U64Array, tie: str) -> None:
        t = lpis.target_vcpu
        idx = np.flatnonzero(t >= 0)
        iid = lpis.intid[idx].astype(np.uint64)
        v = t[idx].astype(np.int64)
        addr = base[v] + (iid >> np.uint64(3))
        n = idx.size
        self.n_entries = n
        # reads issued by the GPA-keyed cache in each walk order
        self.reads = {"insertion": _count_changes(addr)}
        self.reads["intid"] = _count_changes(addr[np.argsort(iid, kind="stable")]) if n else 0
        key = (addr << np.uint64(3)) | (iid & np.uint64(7))
        o = np.argsort(key, kind="stable")  # ties stay in row order
        ks = key[o]
        self.has_bit_alias = bool(n > 1 and np.any(ks[1:] == ks[:-1]))
        if self.has_bit_alias and tie == "intid":
            o = np.lexsort((iid, key))
        perm = idx[o]
        v_s = v[o].astype(np.int32)
        addr_s = addr[o]
        del key, ks, iid, v, addr, idx
        self.runs, self.perm_x = _k.build_runs(perm, v_s, addr_s, lpis.intid, _MAX_RUN, _MIN_STRIDED)
        lens = self.runs[:, 3]
        e0 = np.zeros(lens.size + 1, dtype=np.int64)
        np.cumsum(lens, out=e0[1:])
        # first and last guest byte of each run
        self.run_lo: U64Array
        self.run_hi: U64Array
        if n:
            self.run_lo = addr_s[e0[:-1]]
            self.run_hi = addr_s[e0[1:] - 1]
        else:
            self.run_lo = self.run_hi = np.zeros(0, np.uint64)
        self.units, self.pages_cap = _make_units(e0, self.run_lo, self.run_hi, addr_s)
        # no two targeted LPIs share a guest byte
        self.one_per_byte = bool(n < 2 or np.all(addr_s[1:] != addr_s[:-1]))
        self.addr_min = int(addr_s[0]) if n else 0
        self.addr_max = int(addr_s[-1]) if n else 0

    @property
    def nbytes(self) -> int:
        return int(
            self.runs.nbytes + self.perm_x.nbytes + self.run_lo.nbytes + self.run_hi.nbytes + self.units.nbytes
        )

    def covered(self, mem: GuestMemory) -> bool:
        """True when every address of the plan lies in a writable extent of ``mem`` (then no
        access can fault). Its jobs cache the answer (``_Job.no_fault``)."""
        return bool(mem.covered(self.run_lo, self.run_hi, True).all()) if self.n_entries else True

    def runs_in_slots(self, mem: GuestMemory) -> bool:
        """True when every run's addresses lie in a single memslot (the run kernel reaches a
        run's table through one pointer). Its jobs cache the answer (``_Job.in_slots``)."""
        if not self.n_entries:
            return True
        starts, ends = mem.kernel_tables()[:2]
        if starts.size == 0:
            return False
        lo = np.searchsorted(starts, self.run_lo, side="right") - 1
        hi = np.searchsorted(starts, self.run_hi, side="right") - 1
        return bool(np.all((lo == hi) & (lo >= 0) & (self.run_hi < ends[np.maximum(hi, 0)])))


def _count_changes(a: U64Array) -> int:
    if a.size == 0:
        return 0
    return int(1 + np.count_nonzero(a[1:] != a[:-1]))


def _make_units(e0: I64Array, run_lo: U64Array, run_hi: U64Array, addr_s: U64Array) -> tuple[I64Array, int]:
    """Split runs into work units of about ``_UNIT`` entries, never between two runs that share
    a guest byte. Returns (units int64 [U, 4] = (0, run_lo, run_hi, page_offset), pages_cap)."""
    nruns = run_lo.size
    if nruns == 0:
        return np.zeros((0, 4), np.int64), 0
    can = np.flatnonzero(run_lo[1:] != run_hi[:-1]) + 1  # may split before these runs
    targets = np.arange(_UNIT, int(e0[-1]), _UNIT, dtype=np.int64)
    cuts = can[np.minimum(np.searchsorted(e0[can], targets), max(can.size - 1, 0))] if can.size else can
    bounds = np.unique(np.concatenate(([0], cuts, [nruns]))).astype(np.int64)
    units = np.zeros((bounds.size - 1, 4), np.int64)
    units[:, 1] = bounds[:-1]
    units[:, 2] = bounds[1:]
    pages = addr_s >> np.uint64(PAGE_SHIFT)
    newp = np.zeros(pages.size, np.int64)
    newp[1:] = pages[1:] != pages[:-1]
    cum = np.cumsum(newp)
    ea = e0[units[:, 1]]
    eb = e0[units[:, 2]] - 1
    # distinct pages, plus one per run: the run kernel logs pages per run
    caps = cum[eb] - cum[ea] + 1 + (units[:, 2] - units[:, 1])
    units[1:, 3] = np.cumsum(caps)[:-1]
    return units, int(caps.sum())


def _plan(lpis: LPITable, base: U64Array, tie: str) -> _Plan:
    """The cached plan for (lpis, base, tie). A plan without aliased bits serves both ties."""
    bkey = base.tobytes()
    cache = lpis.plan_cache
    p: _Plan | None = cache.get(("plan", tie, bkey))
    if p is not None:
        return p
    other: _Plan | None = cache.get(("plan", "intid" if tie == "insertion" else "insertion", bkey))
    if other is not None and not other.has_bit_alias:
        cache[("plan", tie, bkey)] = other
        return other
    plans = [k for k in cache if k[0] == "plan"]
    if len(plans) >= 4:  # keep a handful of PENDBASER sets
        for k in plans[:2]:
            del cache[k]
    p = _Plan(lpis, base, tie)
    cache[("plan", tie, bkey)] = p
    return p


def _walk_intid(lpis: LPITable) -> I32Array:
    w: I32Array | None = lpis.plan_cache.get("walk_intid")
    if w is None:
        w = np.argsort(lpis.intid, kind="stable").astype(np.int32)
        lpis.plan_cache["walk_intid"] = w
    return w


# ===================================================================== validation
def _addr(a: npt.NDArray[Any]) -> int:
    addr: int = a.__array_interface__["data"][0]
    return addr


def _check_mem(mem: object, where: str) -> None:
    if not isinstance(mem, GuestMemory):
        raise TypeError(f"{where}mem must be a vlpi.GuestMemory, got {type(mem).__name__}")


def _check_lpis(lpis: object, where: str) -> None:
    if not isinstance(lpis, LPITable):
        raise TypeError(f"{where}lpis must be a vlpi.LPITable, got {type(lpis).__name__}")


def _bases(pendbaser: npt.ArrayLike, lpis: LPITable, where: str) -> U64Array:
    pb = np.asarray(pendbaser)
    if pb.ndim != 1:
        raise ValueError(f"{where}pendbaser must be 1-D (one GICR_PENDBASER per vCPU), got shape {pb.shape}")
    if pb.size and (pb.dtype == np.bool_ or not np.issubdtype(pb.dtype, np.integer)):
        raise TypeError(f"{where}pendbaser must be an unsigned 64-bit integer array, got dtype {pb.dtype}")
    if pb.size and np.issubdtype(pb.dtype, np.signedinteger) and (pb < 0).any():
        bad = int(np.flatnonzero(pb < 0)[0])
        raise ValueError(f"{where}pendbaser[{bad}] = {pb[bad]} is negative; pass raw uint64 register values")
    n = pb.shape[0]
    if lpis.max_target >= n:
        bad = int(np.flatnonzero(lpis.target_vcpu >= n)[0])
        raise ValueError(
            f"{where}lpis.target_vcpu[{bad}] = {int(lpis.target_vcpu[bad])} but pendbaser has only {n} "
            f"vCPUs (target_vcpu must be -1 or < {n})"
        )
    return pb.astype(np.uint64) & np.uint64(PENDBASER_ADDRESS_MASK)


def _check_vpt(vpt: object, lpis: LPITable, n_vcpus: int, has_gicv4_1: bool, where: str) -> tuple[U8Array, int]:
    """Returns (flat uint8 VPT, vpt_bytes) or (empty, 0) when no VPT is read."""
    if not has_gicv4_1:
        return np.zeros(1, np.uint8), 0
    if vpt is None:
        hw = lpis.hw
        if len(lpis) and hw.any():
            bad = int(np.flatnonzero(hw)[0])
            raise ValueError(
                f"{where}vpt is required with has_gicv4_1=True: lpis.hw[{bad}] is set "
                f"(INTID {int(lpis.intid[bad])}) and its pending state lives in the VPT"
            )
        return np.zeros(1, np.uint8), 0
    if not isinstance(vpt, np.ndarray):
        raise TypeError(f"{where}vpt must be a numpy uint8 array [n_vcpus, vpt_bytes], got {type(vpt).__name__}")
    if vpt.dtype != np.uint8:
        raise TypeError(f"{where}vpt must have dtype uint8, got {vpt.dtype}")
    if vpt.ndim != 2 or vpt.shape[0] != n_vcpus:
        raise ValueError(f"{where}vpt must have shape [{n_vcpus}, vpt_bytes] (one VPT per vPE), got {vpt.shape}")
    vb = int(vpt.shape[1])
    if (vb << 3) <= lpis.max_intid and len(lpis):
        beyond = np.flatnonzero((lpis.hw != 0) & ((lpis.intid >> 3) >= vb))
        if beyond.size:
            b = int(beyond[0])
            raise ValueError(
                f"{where}vpt is too narrow: lpis.hw[{b}] is set for INTID {int(lpis.intid[b])}, whose VPT byte "
                f"{int(lpis.intid[b]) >> 3} lies beyond vpt_bytes={vb}"
            )
    if vb == 0:
        return np.zeros(1, np.uint8), 0
    return np.ascontiguousarray(vpt).reshape(-1), vb


def _check_order(order: object) -> None:
    if not isinstance(order, str) or order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def _check_flag(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")
    return bool(value)


_NO_GUARD = contextlib.nullcontext()


def _guard(jobs: Iterable[_Job], *extra: npt.NDArray[Any]) -> contextlib.AbstractContextManager[None]:
    """Debug mode (``VLPI_RAW_CHECK=1``): register what the jobs' kernels may reach through raw
    addresses; a no-op otherwise."""
    if not _jit.RAW_CHECK:
        return _NO_GUARD
    arrays = list(extra)
    for c in jobs:
        lp = c.lpis
        t = c.mem.kernel_tables()
        flags = [] if lp.packed else [lp.pending_latch, lp.hw]  # a packed table's flags are c.bits
        arrays += [lp.intid, lp.target_vcpu, *flags, c.base, c.vpt, *t[:4], *t[6]]
        arrays.append(c.bits)
        if c.hw_zero is not None:
            arrays.append(c.hw_zero)
        if c.row is not None:
            arrays += [c.row, c.keep[0], c.keep[1], *c.keep[2][:4], *c.keep[2][6]]
        if c.plan is not None:
            arrays += [c.plan.runs, c.plan.perm_x]
    return _jit.guard(arrays)


class _Locked:
    """Holds the locks of the memories and LPI tables of one engine call. Every engine call takes
    them in one global order: memories before tables, each kind by id; so concurrent calls over
    overlapping objects cannot deadlock (``add_slot``/``remove_slot`` and ``set_targets`` take
    one lock each). Slot changes and retargeting wait for the call to end."""

    __slots__ = ("locks",)

    def __init__(self, mems: Iterable[GuestMemory], tables: Iterable[LPITable]) -> None:
        self.locks: list[threading.RLock] = []
        for objs in (mems, tables):
            by_id = {id(o): o.lock for o in objs}
            self.locks += [by_id[k] for k in sorted(by_id)]

    def __enter__(self) -> None:
        done: list[threading.RLock] = []
        try:
            for lk in self.locks:
                lk.acquire()
                done.append(lk)
        except BaseException:
            for lk in reversed(done):
                lk.release()
            raise

    def __exit__(self, *exc: object) -> None:
        for lk in reversed(self.locks):
            lk.release()


# ===================================================================== job context
class _Job:
    """One VM's validated arguments, its plan and its kernel VM-table row.

    Cached on the LPITable and reused while the call's arguments are the same objects with the
    same contents (``_job``), so a steady-state save of many VMs does almost no Python work per VM.
    """

    __slots__ = (
        "mem", "lpis", "base", "vpt", "vb", "plan", "row", "n_vcpus", "use_vpt", "keep",
        "gen", "pb_obj", "pb_bytes", "vpt_obj", "vpt_shape", "has41", "latch_obj", "hw_obj", "recheck",
        "bits", "nbw", "hw_zero", "batches", "ver", "nofault", "inslots", "n", "skipped", "__weakref__",
    )

    def __init__(self, mem: GuestMemory, pendbaser: npt.ArrayLike, lpis: LPITable, vpt: np.ndarray | None,
                 has_gicv4_1: bool, tie: str | None, where: str = "", save: bool = False) -> None:
        _check_mem(mem, where)
        _check_lpis(lpis, where)
        self.mem = mem
        self.lpis = lpis
        self.ver = lpis.version
        self.base = _bases(pendbaser, lpis, where)
        self.n_vcpus = int(self.base.shape[0])
        self.vpt, self.vb = _check_vpt(vpt, lpis, self.n_vcpus, has_gicv4_1, where)
        self.use_vpt = bool(has_gicv4_1 and self.vb > 0)
        self.plan = _plan(lpis, self.base, tie) if tie is not None else None
        self.n = len(lpis)  # LPIs, and those without a target (for the reports)
        self.skipped = self.n - self.plan.n_entries if self.plan is not None else 0
        self.row: U64Array | None = None
        # no access of the plan can fault / every run lies in one memslot (computed on first use;
        # a job is only used while its memory's generation is the one it was made for)
        self.nofault: bool | None = None
        self.inslots: bool | None = None
        self.batches: dict[tuple[bool, bool], _Batch] = {}  # (flavour, restore) -> this job's own _Batch
        # a save's snapshot of pending_latch and hw as bit arrays (packed at the start of every
        # call; a pad word lets the kernels read 64-bit windows), shared by the table's save jobs
        # (calls on one table hold its lock, so one snapshot at a time); restore reads no flags.
        # A packed table's own bits are in that format: its jobs use them (saves read them,
        # restores write the latch bits), and a save that reads no VPT reads zero hw bits.
        words = lpis.flag_words
        self.hw_zero: U64Array | None = None
        if words is not None:
            self.nbw = flag_word_count(len(lpis))
            self.bits = words
            if save and not self.use_vpt:
                self.hw_zero = np.zeros(self.nbw, np.uint64)
        elif save:
            self.nbw = flag_word_count(len(lpis))
            bits = lpis.plan_cache.get("flag_bits")
            if bits is None or bits.size != 2 * self.nbw:
                bits = np.zeros(2 * self.nbw, np.uint64)
                lpis.plan_cache["flag_bits"] = bits
            self.bits = bits
        else:
            self.nbw = 1
            self.bits = np.zeros(2, np.uint64)
        # what the cached validation depends on
        self.gen = mem.generation
        self.pb_obj = pendbaser if isinstance(pendbaser, np.ndarray) else None
        self.pb_bytes = self.pb_obj.tobytes() if self.pb_obj is not None else None
        self.vpt_obj = vpt
        self.vpt_shape = vpt.shape if isinstance(vpt, np.ndarray) else None
        self.has41 = bool(has_gicv4_1)
        # a byte table's flag arrays (replaced through its setters); a packed table's bits never are
        self.latch_obj = lpis.pending_latch if words is None else None
        self.hw_obj = lpis.hw if words is None else None
        # the VPT checks read hw contents, which may change between calls; a VPT that had to be
        # copied (not C-contiguous) must be copied again, or later changes to it would be missed
        self.recheck = bool(
            has_gicv4_1
            and len(lpis)
            and (vpt is None or (self.vb << 3) <= lpis.max_intid or not vpt.flags.c_contiguous)
        )

    def still_valid(self, mem: GuestMemory, pendbaser: npt.ArrayLike, lpis: LPITable, vpt: np.ndarray | None,
                    has_gicv4_1: bool) -> bool:
        return (
            self.pb_obj is not None
            and pendbaser is self.pb_obj
            and mem is self.mem
            and mem.generation == self.gen
            and vpt is self.vpt_obj
            and has_gicv4_1 == self.has41
            and (self.latch_obj is None or (lpis.pending_latch is self.latch_obj and lpis.hw is self.hw_obj))
            and not self.recheck
            and (vpt is None or vpt.shape == self.vpt_shape)
            and pendbaser.tobytes() == self.pb_bytes
        )

    def same_call(self, job: object, has_gicv4_1: bool) -> bool:
        """True when ``job`` (a caller's ``(mem, pendbaser, lpis, vpt)``) is the arguments this
        job was made for, unchanged: the many-VM save's check of its cached jobs."""
        return (
            type(job) is tuple
            and len(job) == 4
            and job[2] is self.lpis  # (still_valid checks the rest: it is called on this table's jobs)
            and self.lpis.version == self.ver
            and self.still_valid(job[0], job[1], job[2], job[3], has_gicv4_1)
        )

    def no_fault(self) -> bool:
        """No access of the plan can fault in this job's memory (cached on the job)."""
        v = self.nofault
        if v is None:
            v = self.nofault = self.planned.covered(self.mem)
        return v

    def in_slots(self) -> bool:
        """Every run of the plan lies in one memslot of this job's memory (cached on the job)."""
        v = self.inslots
        if v is None:
            v = self.inslots = self.planned.runs_in_slots(self.mem)
        return v

    @property
    def planned(self) -> _Plan:
        """The plan (every job made with a walk order has one: saves and restores)."""
        p = self.plan
        assert p is not None, "a job made without a walk order has no plan"
        return p

    def make_row(self) -> U64Array:
        if self.row is not None:
            return self.row
        p = self.planned
        lp = self.lpis
        tables = self.mem.kernel_tables()
        sstart, send, sptr = tables[:3]
        packed = self.latch_obj is None
        # a packed table has no flag bytes: its bits are self.bits
        latch: BoolArray | U8Array = self.bits.view(np.uint8) if packed else lp.pending_latch
        hw: BoolArray | U8Array = self.bits.view(np.uint8) if packed else lp.hw
        # alive while the row is (tables hold the slot arrays)
        self.keep: tuple[BoolArray | U8Array, BoolArray | U8Array, KernelTables, _Plan] = (latch, hw, tables, p)
        row = np.empty(_k.NCOL, dtype=np.uint64)
        row[_k.P_INTID] = _addr(lp.intid)
        row[_k.P_LATCH] = _addr(latch)
        row[_k.P_HW] = _addr(hw)
        row[_k.P_VPT] = _addr(self.vpt)
        row[_k.VPT_BYTES] = self.vb
        row[_k.P_BASE] = _addr(self.base)
        row[_k.P_RUNS] = _addr(p.runs)
        row[_k.N_RUNS] = p.runs.shape[0]
        row[_k.P_PERMX] = _addr(p.perm_x)
        row[_k.N_PERMX] = p.perm_x.shape[0]
        row[_k.N_LPIS] = len(lp)
        row[_k.P_SSTART] = _addr(sstart)
        row[_k.P_SEND] = _addr(send)
        row[_k.P_SPTR] = _addr(sptr)
        row[_k.N_SLOTS] = sstart.shape[0]
        row[_k.N_VCPUS] = self.n_vcpus
        row[_k.USE_VPT] = 1 if self.use_vpt else 0
        row[_k.ONE_PER_BYTE] = 1 if p.one_per_byte else 0
        row[_k.P_LBITS] = _addr(self.bits)
        row[_k.P_HBITS] = _addr(self.bits) + 8 * self.nbw if self.hw_zero is None else _addr(self.hw_zero)
        row[_k.N_BITW] = self.nbw
        row[_k.FLAGS_PACKED] = 1 if packed else 0
        self.row = row
        return row

    def first_fault(self, mode: int, key_is_intid: bool) -> _Fault | None:
        """(row, is_write, gpa) of the first faulting access, or None. Cheap when covered."""
        plan = self.planned
        if self.no_fault():
            return None
        ro = self.mem.kernel_tables()[3]
        row = self.make_row()
        with _guard([self]):
            i, w, gpa = _k.first_fault(row, 0, plan.runs.shape[0], mode, key_is_intid, ro)
        if i < 0:
            return None
        return int(i), bool(w), int(gpa)


def _job(mem: GuestMemory, pendbaser: npt.ArrayLike, lpis: LPITable, vpt: np.ndarray | None, has_gicv4_1: bool,
         tie: str, where: str = "", kind: str = "save") -> _Job:
    """The validated job for these arguments: the cached one when nothing it depends on changed."""
    if isinstance(lpis, LPITable):
        key = ("job", kind, tie, has_gicv4_1)
        j: _Job | None = lpis.plan_cache.get(key)
        if j is not None and j.still_valid(mem, pendbaser, lpis, vpt, has_gicv4_1):
            return j
        j = _Job(mem, pendbaser, lpis, vpt, has_gicv4_1, tie, where, save=kind == "save")
        lpis.plan_cache[key] = j
        return j
    return _Job(mem, pendbaser, lpis, vpt, has_gicv4_1, tie, where, save=kind == "save")


class _Batch:
    """The stacked kernel inputs of a list of jobs (one kernel flavour). Reused by the next call
    with the same jobs (same cached _Job objects), so a steady-state call stacks nothing."""

    def __init__(self, jobs: list[_Job], whole_vm: bool) -> None:
        self.refs = [weakref.ref(j) for j in jobs]
        self.vmt = np.stack([j.make_row() for j in jobs]) if jobs else np.zeros((0, _k.NCOL), np.uint64)
        parts: list[I64Array] = []
        poff = 0
        for i, jb in enumerate(jobs):
            plan = jb.planned
            pu = plan.units
            if whole_vm and pu.shape[0] > 1:
                u = np.array([[0, 0, plan.runs.shape[0], 0]], np.int64)  # all runs, one unit
            else:
                u = pu.copy()
            u[:, 0] = i
            u[:, 3] += poff
            poff += plan.pages_cap
            parts.append(u)
        self.units = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)
        self.pages_cap = max(poff, 1)
        self.n = len(jobs)
        self.serial = self.units.shape[0] < 2 or sum(j.planned.n_entries for j in jobs) < _SERIAL_BELOW
        # the kernels' outputs: pages, counts per unit, scratch bytes (64 per unit) for stores
        # that change nothing
        nu = self.units.shape[0]
        self.buffers = (np.empty(self.pages_cap, np.uint64), np.zeros((nu, 4), np.int64), np.zeros(nu * 64, np.uint8))

    def matches(self, jobs: list[_Job]) -> bool:
        return len(jobs) == len(self.refs) and all(r() is j for r, j in zip(self.refs, jobs, strict=True))

    def run(
        self, kernel: _UnitsKernel, restore: bool, jobs: list[_Job], pack: bool = False
    ) -> tuple[I64Array, list[I64Array]]:
        """Run the kernel (first taking the jobs' flag snapshots if ``pack``); returns
        (counts [n, 4], list of per-job page arrays). The kernel's output buffers are the
        batch's own: every call using a batch holds the locks of all its jobs, so no two calls
        use them at once (the returned arrays are fresh)."""
        units = self.units
        out_pages, out_cnt, scratch = self.buffers
        if units.shape[0]:
            # small batches and single units run serially: waking the thread pool costs more
            # than it saves, and badly so when the machine is oversubscribed
            kern = _SERIAL[kernel] if self.serial else kernel
            if _jit.RAW_CHECK:
                with _guard(jobs, scratch, self.vmt):
                    counts, pages, off = kern(self.vmt, units, out_pages, out_cnt, scratch, restore, pack)
            else:  # the kernel ends with collect() of its outputs (one call, not two)
                counts, pages, off = kern(self.vmt, units, out_pages, out_cnt, scratch, restore, pack)
        else:
            counts, pages, off = _k.collect(units, out_cnt, out_pages, self.n)
        pages.flags.writeable = False  # shared by the reports and the memories' dirty logs
        o = off.tolist()
        return counts, [pages[o[i] : o[i + 1]] if o[i + 1] > o[i] else _NO_PAGES for i in range(self.n)]


_SERIAL: dict[_UnitsKernel, _UnitsKernel] = {_k.run_units: _k.run_units_serial, _k.merge_units: _k.merge_units_serial}
_SERIAL_BELOW = 1 << 15  # LPIs per batch below which the kernels run on one thread (measured: a
# 57,344-LPI VM saves at 3.8 ns/LPI on two threads vs 4.6 on one, passive OpenMP wait policy)
_BATCHES: dict[tuple[bool, bool], _Batch] = {}  # (flavour, restore) -> the last _Batch


def _run(jobs: list[_Job], restore: bool, pack: bool = False) -> list[tuple[list[int], I64Array]]:
    """Run jobs through the run kernel where every run lies in one memslot, and through the
    byte-merging kernel otherwise (a run straddling adjacent slots); one parallel pass each.
    ``pack``: the kernels take the save's flag snapshots first (not yet taken).
    Returns per job (counts, pages), counts = (writes, vpt_reads, bytes_changed, n_pages); the
    pages are logged in each job's memory."""
    flags = [jb.in_slots() for jb in jobs]
    res: list[tuple[list[int], I64Array]] = [None] * len(jobs)  # type: ignore[list-item]  # all set below
    for run_kernel in (True, False):
        idx = [i for i, f in enumerate(flags) if f is run_kernel]
        if not idx:
            continue
        sub = [jobs[i] for i in idx]
        key = (run_kernel, restore)
        if len(sub) == 1:  # one VM (save_pending_tables, sync_pending_status): cached on its job,
            jb = sub[0]  # so a host saved or restored one VM at a time stacks nothing either
            batch = jb.batches.get(key)
            if batch is None:
                batch = jb.batches[key] = _Batch(sub, whole_vm=restore)
        else:
            batch = _BATCHES.get(key)
            if batch is None or not batch.matches(sub):
                batch = _Batch(sub, whole_vm=restore)
                _BATCHES[key] = batch
        counts, pages = batch.run(_k.run_units if run_kernel else _k.merge_units, restore, sub, pack)
        rows = counts.tolist()  # Python ints for the reports (one conversion, not one per field)
        for k, i in enumerate(idx):
            if len(pages[k]):
                jobs[i].mem.mark_dirty(pages[k])
            res[i] = (rows[k], pages[k])
    return res


def _snapshot_flags(jobs: list[_Job]) -> None:
    """Pack each job's ``pending_latch`` and ``hw`` into its bit arrays. The fault scan and the
    kernels of this call read only these snapshots, so flags written in place by another thread
    during the call cannot make them disagree (or make a kernel write where the scan saw no write)."""
    if not jobs:
        return
    if len(jobs) == 1:  # one VM: its row as a one-row table, packed on this thread
        vmt = jobs[0].make_row().reshape(1, -1)
        kern = _k.pack_flags_serial
    else:  # VMs in parallel (waking the thread pool pays only for large batches)
        vmt = np.stack([c.make_row() for c in jobs])
        kern = _k.pack_flags_serial if sum(len(c.lpis) for c in jobs) < _SERIAL_BELOW else _k.pack_flags
    with _guard(jobs, vmt):
        kern(vmt)


def _changed_bytes(mem: GuestMemory, wr_addr: U64Array, wr_old: U8Array) -> tuple[int, I64Array]:
    """(bytes_changed, dirty_pages) from the sequential path's write record."""
    if wr_addr.size == 0:
        return 0, _NO_PAGES
    ua, first = np.unique(wr_addr, return_index=True)
    now = mem.read_u8(ua)
    pages = np.unique((ua >> np.uint64(PAGE_SHIFT)).astype(np.int64))
    pages.flags.writeable = False  # shared by the report and the memory's dirty log
    mem.mark_dirty(pages)
    return int(np.count_nonzero(now != wr_old[first])), pages


# ===================================================================== save
def save_pending_tables(
    mem: GuestMemory,
    pendbaser: npt.ArrayLike,
    lpis: LPITable,
    *,
    vpt: np.ndarray | None = None,
    has_gicv4_1: bool = False,
    order: str = "intid",
    atomic: bool = True,
) -> SaveReport:
    """Merge every LPI's pending state into the guest's pending tables (``SAVE_PENDING_TABLES``).

    Parameters
    ----------
    mem : GuestMemory
        Guest RAM holding the pending tables.
    pendbaser : array-like of uint64
        Raw GICR_PENDBASER per vCPU; only bits [51:16] (the table base) are used.
    lpis : LPITable
        The VM's LPIs.
    vpt : numpy.ndarray of uint8, shape [n_vcpus, vpt_bytes], optional
        Each vPE's virtual pending table. Required when ``has_gicv4_1`` and any LPI is ``hw``.
    has_gicv4_1 : bool
        Host GIC is GICv4.1: vPEs are unmapped around the walk and hw LPIs save their VPT bit.
        Without it, hw LPIs save ``pending_latch`` (normally False), as the kernel does.
    order : {"intid", "insertion"}
        Walk order of the kernel being modelled: INTID order (Linux >= 6.9) or row (creation)
        order (5.13 - 6.8). Observable through read counts and through aliased bits.
    atomic : bool
        True (default): if any access of the kernel's walk would fault, raise
        ``GuestMemoryFault`` before writing anything. False: kernel-exact partial save.

    Returns
    -------
    SaveReport

    Raises
    ------
    GuestMemoryFault
        An access of the walk faults (``.report`` holds what was done: nothing with
        ``atomic=True``, the kernel's partial save with ``atomic=False``).
    TypeError, ValueError
        Bad arguments (nothing is changed).
    """
    t0 = time.perf_counter()
    has_gicv4_1 = _check_flag(has_gicv4_1, "has_gicv4_1")
    atomic = _check_flag(atomic, "atomic")
    _check_order(order)
    _check_mem(mem, "")
    _check_lpis(lpis, "")
    with mem.lock, lpis.lock:  # the global order of _Locked: memory, then table
        return _save_locked([_job(mem, pendbaser, lpis, vpt, has_gicv4_1, order)], has_gicv4_1, order, atomic, t0)[0]


def save_pending_tables_many(
    jobs: Sequence[_JobArgs],
    *,
    has_gicv4_1: bool = False,
    order: str = "intid",
    atomic: bool = True,
) -> list[SaveReport]:
    """Save the pending tables of many VMs of one host in one parallel pass.

    Parameters
    ----------
    jobs : sequence of (mem, pendbaser, lpis, vpt)
        One tuple per VM (``vpt`` may be None); see :func:`save_pending_tables`. VMs must not
        share guest memory.
    has_gicv4_1, order, atomic
        As for :func:`save_pending_tables`.

    Returns
    -------
    list of SaveReport
        One per job, identical to one :func:`save_pending_tables` call per VM in job order.

    Raises
    ------
    GuestMemoryFault
        With ``atomic=True`` raised before any VM is written if any VM's walk would fault.
        With ``atomic=False`` the VMs before the first faulting one are saved, the faulting one
        is saved up to its fault (kernel-exact), later VMs are untouched. The exception carries
        ``.job`` (index) and ``.reports`` (reports of the VMs saved before it).
    """
    t0 = time.perf_counter()
    has_gicv4_1 = _check_flag(has_gicv4_1, "has_gicv4_1")
    atomic = _check_flag(atomic, "atomic")
    _check_order(order)
    if type(jobs) is not list and (isinstance(jobs, (str, bytes)) or not isinstance(jobs, Sequence)):
        raise TypeError(f"jobs must be a sequence of (mem, pendbaser, lpis, vpt) tuples, got {type(jobs).__name__}")
    jobs = list(jobs)  # one snapshot: the caller's list may change in another thread
    key = (has_gicv4_1, order)
    last = _LAST_MANY.get(key)
    if last is not None and len(jobs) == len(last.refs):
        # A host saved again: take the last call's locks (in the global order), then check that
        # every job is the same objects, still valid. Then those objects passed this function's
        # checks (types, one memory per VM) and these are their locks; otherwise start over.
        with last.locked:
            ctx = last.jobs(jobs, has_gicv4_1)
            if ctx is not None:
                return _save_locked(ctx, has_gicv4_1, order, atomic, t0)
    seen: dict[int, int] = {}
    for j, job in enumerate(jobs):
        if not isinstance(job, (tuple, list)) or len(job) != 4:
            raise TypeError(f"jobs[{j}] must be a (mem, pendbaser, lpis, vpt) tuple")
        if not (isinstance(job[0], GuestMemory) and isinstance(job[2], LPITable)):
            _check_mem(job[0], f"jobs[{j}]: ")
            _check_lpis(job[2], f"jobs[{j}]: ")
        other = seen.setdefault(id(job[0]), j)
        if other != j:
            raise ValueError(f"jobs[{j}] shares its GuestMemory with jobs[{other}]; one GuestMemory per VM")
    locked = _Locked([job[0] for job in jobs], [job[2] for job in jobs])
    with locked:
        ctx = [_job(mem, pb, lp, vpt, has_gicv4_1, order, f"jobs[{j}]: ") for j, (mem, pb, lp, vpt) in enumerate(jobs)]
        reports = _save_locked(ctx, has_gicv4_1, order, atomic, t0)
        _LAST_MANY[key] = _Many(ctx, locked)
    return reports


class _Many:
    """The last many-VM save's call (per flavour): its jobs (weakly: the LPI tables own them) and
    its sorted locks. A host saved again with the same objects skips the argument type checks,
    the lock sort and the per-VM cache lookups; every job is still checked (``_Job.same_call``),
    under the locks, before it is used."""

    __slots__ = ("refs", "locked")

    def __init__(self, ctx: list[_Job], locked: _Locked) -> None:
        self.refs = [weakref.ref(c) for c in ctx]
        self.locked = locked

    def jobs(self, jobs: Sequence[object], has_gicv4_1: bool) -> list[_Job] | None:
        """The cached jobs when ``jobs`` (as many as ``refs``) are the same objects and every job
        is still valid for them (call holding ``locked``)."""
        out = []
        for job, r in zip(jobs, self.refs, strict=True):
            c = r()
            if c is None or not c.same_call(job, has_gicv4_1):
                return None
            out.append(c)
        return out


_LAST_MANY: dict[tuple[bool, str], _Many] = {}  # (has_gicv4_1, order) -> the last many-VM save


def _save_locked(ctx: list[_Job], has_gicv4_1: bool, order: str, atomic: bool, t0: float) -> list[SaveReport]:
    """Save the VMs of ``ctx`` (validated jobs; the caller holds their locks)."""
    key_intid = order == "intid"
    # The fault scan reads the flag snapshots; where no access can fault (the usual case) there
    # is no scan, and the run kernel takes the snapshots itself, in the same parallel call.
    scan = any(not c.no_fault() for c in ctx)
    if scan:
        _snapshot_flags(ctx)
    bad: int | None = None
    fault: _Fault | None = None
    for j, c in enumerate(ctx if scan else ()):  # the first VM whose walk would fault, if any
        fault = c.first_fault(0, key_intid)
        if fault is not None:
            bad = j
            break
    if bad is not None and atomic:
        assert fault is not None  # found with bad
        c = ctx[bad]
        row, w, gpa = fault
        rep = _save_report(c, has_gicv4_1, order, 0, 0, 0, 0, _NO_PAGES, time.perf_counter() - t0)
        exc = _fault(c, row, w, gpa, rep, "atomic save: nothing was written")
        exc.job = bad
        exc.reports = []
        raise exc
    ok = ctx if bad is None else ctx[:bad]
    # (a packed table's flags are bits already: the kernels read them in place)
    results = _run(ok, restore=False, pack=not scan and any(c.latch_obj is not None for c in ok))
    dt = time.perf_counter() - t0
    reports = [
        _save_report(c, has_gicv4_1, order, c.planned.reads[order], cnt[0], cnt[1], cnt[2], pages, dt)
        for c, (cnt, pages) in zip(ok, results, strict=True)
    ]
    if bad is not None:
        rep, f = _sequential_save(ctx[bad], has_gicv4_1, order, t0)
        assert f is not None  # the literal walk faults where the scan did
        exc = _fault(ctx[bad], f[0], f[1], f[2], rep, "kernel-exact partial save (atomic=False)")
        exc.job = bad
        exc.reports = reports
        raise exc
    return reports


def _save_report(c: _Job, has_gicv4_1: bool, order: str, reads: int, writes: int, vpt_reads: int, changed: int,
                 pages: I64Array, dt: float) -> SaveReport:
    nv = c.n_vcpus if has_gicv4_1 else 0
    # (lpis_total, lpis_skipped, guest_reads, guest_writes, vpt_reads, bytes_changed,
    #  vpes_unmapped, vpes_remapped, dirty_pages, elapsed_s)
    return SaveReport(c.n, c.skipped, reads, writes, vpt_reads, changed, nv, nv, pages, dt)


def _fault(c: _Job, row: int, write: bool, gpa: int, report: SaveReport | SyncReport, detail: str) -> GuestMemoryFault:
    return GuestMemoryFault(
        gpa,
        write=write,
        intid=int(c.lpis.intid[row]),
        vcpu=int(c.lpis.target_vcpu[row]),
        report=report,
        detail=detail,
    )


def _sequential_save(c: _Job, has_gicv4_1: bool, order: str, t0: float) -> tuple[SaveReport, _Fault | None]:
    """The literal walk (kernel-exact, stops at the first fault). Returns (report, fault)."""
    lp = c.lpis
    sstart, send, sptr, sro = c.mem.kernel_tables()[:4]
    use_walk = order == "intid"
    walk = _walk_intid(lp) if use_walk else np.zeros(1, np.int32)
    n = max(c.planned.n_entries, 1)
    wr_addr = np.empty(n, np.uint64)
    wr_old = np.empty(n, np.uint8)
    with lp.flag_bytes() as (latch, hw), _guard([c], latch, hw):
        reads, writes, vreads, frow, fw, fgpa, nrec = _kl.walk_save(
            walk, use_walk, lp.intid, lp.target_vcpu, latch, hw,
            c.base, c.vpt, c.vb, c.use_vpt, sstart, send, sptr, sro, wr_addr, wr_old,
        )
    changed, pages = _changed_bytes(c.mem, wr_addr[:nrec], wr_old[:nrec])
    rep = _save_report(c, has_gicv4_1, order, int(reads), int(writes), int(vreads), changed, pages,
                       time.perf_counter() - t0)
    if frow < 0:
        return rep, None
    # the walk stopped at the fault: only LPIs walked before it were skipped
    untargeted = lp.target_vcpu < 0
    before = lp.intid < lp.intid[frow] if use_walk else np.arange(len(lp)) < frow
    rep = replace(rep, lpis_skipped=int(np.count_nonzero(untargeted & before)))
    return rep, (int(frow), bool(fw), int(fgpa))


def kernel_loop_save(
    mem: GuestMemory,
    pendbaser: npt.ArrayLike,
    lpis: LPITable,
    *,
    vpt: np.ndarray | None = None,
    has_gicv4_1: bool = False,
    order: str = "intid",
) -> SaveReport:
    """Baseline: the kernel's save loop, literally, compiled (one LPI at a time in walk order,
    GPA-keyed byte cache, one write per changed bit, memslot lookup per access). Kernel-exact on
    faults (raises ``GuestMemoryFault`` with the partial report). The walk order is cached, as
    the kernel's xarray is ordered. Used by the benchmarks; prefer :func:`save_pending_tables`."""
    t0 = time.perf_counter()
    has_gicv4_1 = _check_flag(has_gicv4_1, "has_gicv4_1")
    _check_order(order)
    _check_mem(mem, "")
    _check_lpis(lpis, "")
    with mem.lock, lpis.lock:  # the global order of _Locked: memory, then table
        c = _Job(mem, pendbaser, lpis, vpt, has_gicv4_1, order)
        rep, f = _sequential_save(c, has_gicv4_1, order, t0)
    if f is not None:
        raise _fault(c, f[0], f[1], f[2], rep, "kernel loop")
    return rep


# ===================================================================== restore
def sync_pending_status(
    mem: GuestMemory,
    pendbaser: npt.ArrayLike,
    lpis: LPITable,
    *,
    atomic: bool = True,
    stop_on_error: bool = True,
) -> SyncReport:
    """Restore: set every targeted LPI's ``pending_latch`` from its guest bit and clear consumed bits.

    Models ``vgic_v3_lpi_sync_pending_status`` for each LPI in row order: read the
    byte (no cache), assign ``pending_latch``, and when the bit was 1 write the byte back with
    it cleared. LPIs without a target are left alone.

    Parameters
    ----------
    mem, pendbaser, lpis
        As for :func:`save_pending_tables`. ``lpis.pending_latch`` is updated in place.
    atomic : bool
        With ``stop_on_error``: True (default) raises before changing anything if any access
        would fault; False is kernel-exact (LPIs before the fault are synced; a faulting clearing
        write leaves that LPI's latch set, as in the kernel).
    stop_on_error : bool
        False: record ``errno.EFAULT`` per faulting LPI in ``lpi_errno`` and carry on; never
        raises for faults (``atomic`` is then irrelevant).

    Returns
    -------
    SyncReport
    """
    t0 = time.perf_counter()
    atomic = _check_flag(atomic, "atomic")
    stop_on_error = _check_flag(stop_on_error, "stop_on_error")
    _check_mem(mem, "")
    _check_lpis(lpis, "")
    with mem.lock, lpis.lock:  # the global order of _Locked: memory, then table
        return _restore_locked(mem, pendbaser, lpis, atomic, stop_on_error, t0)


def _restore_locked(mem: GuestMemory, pendbaser: npt.ArrayLike, lpis: LPITable, atomic: bool, stop_on_error: bool,
                    t0: float) -> SyncReport:
    c = _job(mem, pendbaser, lpis, None, False, "insertion", kind="restore")
    n = len(lpis)
    f = c.first_fault(1, False)
    if f is None:
        ((cnt, pages),) = _run([c], restore=True)
        return SyncReport(
            lpis_total=n, lpis_synced=c.planned.n_entries, guest_reads=c.planned.n_entries, guest_writes=int(cnt[0]),
            lpi_errno=np.zeros(n, np.int32), dirty_pages=pages, elapsed_s=time.perf_counter() - t0,
        )
    if stop_on_error and atomic:
        rep = SyncReport(n, 0, 0, 0, np.zeros(n, np.int32), _NO_PAGES, time.perf_counter() - t0)
        rep.lpi_errno[f[0]] = _errno.EFAULT
        raise _fault(c, f[0], f[1], f[2], rep, "atomic restore: nothing was changed")
    rep, fault = _sequential_restore(c, stop_on_error, t0)
    if stop_on_error and fault is not None:
        raise _fault(c, fault[0], fault[1], fault[2], rep, "kernel-exact partial restore (atomic=False)")
    return rep


def _sequential_restore(c: _Job, stop_on_error: bool, t0: float) -> tuple[SyncReport, _Fault | None]:
    lp = c.lpis
    sstart, send, sptr, sro = c.mem.kernel_tables()[:4]
    n = len(lp)
    err = np.zeros(n, np.int32)
    wr_addr = np.empty(max(n, 1), np.uint64)
    wr_old = np.empty(max(n, 1), np.uint8)
    with lp.flag_bytes(write_latch=True) as (latch, _), _guard([c], latch):
        reads, writes, synced, frow, fw, fgpa, nrec = _kl.walk_restore(
            lp.intid, lp.target_vcpu, latch, c.base, sstart, send, sptr, sro,
            bool(stop_on_error), err, wr_addr, wr_old,
        )
    _, pages = _changed_bytes(c.mem, wr_addr[:nrec], wr_old[:nrec])
    rep = SyncReport(n, int(synced), int(reads), int(writes), err, pages, time.perf_counter() - t0)
    return rep, (None if frow < 0 else (int(frow), bool(fw), int(fgpa)))


def kernel_loop_restore(mem: GuestMemory, pendbaser: npt.ArrayLike, lpis: LPITable) -> SyncReport:
    """Baseline: the kernel's per-LPI restore sync, literally, compiled (row order, a read per
    LPI, a clearing write per set bit). Kernel-exact; raises ``GuestMemoryFault`` at the first
    fault. Used by the benchmarks; prefer :func:`sync_pending_status`."""
    t0 = time.perf_counter()
    _check_mem(mem, "")
    _check_lpis(lpis, "")
    with mem.lock, lpis.lock:  # the global order of _Locked: memory, then table
        c = _Job(mem, pendbaser, lpis, None, False, None)
        rep, f = _sequential_restore(c, True, t0)
    if f is not None:
        raise _fault(c, f[0], f[1], f[2], rep, "kernel loop")
    return rep


# ===================================================================== EnableLPIs scan
def sync_pending_table(
    mem: GuestMemory, pendbaser: npt.ArrayLike, lpis: LPITable, vcpu: int, *, atomic: bool = True
) -> SyncReport:
    """The GICR_CTLR.EnableLPIs 0->1 scan of one vCPU's pending table.

    Walks all LPIs in INTID order, reads ``vcpu``'s table at byte ``intid // 8`` for every LPI
    (whatever its target; cache keyed on the byte offset), and assigns ``pending_latch`` only for
    LPIs that target ``vcpu``. Never writes: bits loaded here are not cleared in RAM.

    Parameters
    ----------
    vcpu : int
        The redistributor whose EnableLPIs went 0 -> 1.
    atomic : bool
        True (default): if a read would fault, raise before assigning anything. False:
        kernel-exact (LPIs with smaller INTIDs than the faulting one are assigned).
    """
    t0 = time.perf_counter()
    atomic = _check_flag(atomic, "atomic")
    _check_mem(mem, "")
    _check_lpis(lpis, "")
    if isinstance(vcpu, (bool, np.bool_)) or not isinstance(vcpu, (int, np.integer)):
        raise TypeError(f"vcpu must be an integer, got {type(vcpu).__name__}")
    with mem.lock, lpis.lock:  # the global order of _Locked: memory, then table
        return _scan_locked(mem, pendbaser, lpis, vcpu, atomic, t0)


def _scan_locked(mem: GuestMemory, pendbaser: npt.ArrayLike, lpis: LPITable, vcpu: IntLike, atomic: bool,
                 t0: float) -> SyncReport:
    c = _Job(mem, pendbaser, lpis, None, False, None)
    if not 0 <= int(vcpu) < c.n_vcpus:
        raise ValueError(f"vcpu = {vcpu} is not a vCPU of this VM (0 <= vcpu < {c.n_vcpus})")
    with lpis.flag_bytes(write_latch=True) as (latch, _), _guard([c], latch):
        return _scan(c, mem, lpis, latch, int(vcpu), atomic, t0)


def _scan(c: _Job, mem: GuestMemory, lpis: LPITable, latch: U8Array, vcpu: int, atomic: bool,
          t0: float) -> SyncReport:
    """The scan, assigning ``latch`` (the table's latch bytes, or a packed table's copy)."""
    n = len(lpis)
    b = np.uint64(c.base[vcpu])
    sstart, send, sptr = mem.kernel_tables()[:3]
    inf = np.int64(1) << 40
    covered = True
    if n:
        lo = np.array([int(b) + (lpis.min_intid >> 3)], np.uint64)
        hi = np.array([int(b) + (lpis.max_intid >> 3)], np.uint64)
        covered = bool(mem.covered(lo, hi, False)[0])
    frow = -1
    if not covered:
        frow, _ = _k.scan_table(lpis.intid, lpis.target_vcpu, latch, b, vcpu, sstart, send, sptr, inf, False)
    if frow < 0:
        _, assigned = _k.scan_table(lpis.intid, lpis.target_vcpu, latch, b, vcpu, sstart, send, sptr, inf, True)
        reads = lpis.plan_cache.get("distinct_bytes")
        if reads is None:
            reads = int(_k.count_distinct_bytes(lpis.intid, inf))
            lpis.plan_cache["distinct_bytes"] = reads
        return SyncReport(n, int(assigned), int(reads), 0, np.zeros(n, np.int32), _NO_PAGES, time.perf_counter() - t0)
    fid = int(lpis.intid[frow])
    gpa = int(b) + (fid >> 3)
    err = np.zeros(n, np.int32)
    err[frow] = _errno.EFAULT
    if atomic:
        rep = SyncReport(n, 0, 0, 0, err, _NO_PAGES, time.perf_counter() - t0)
    else:
        _, assigned = _k.scan_table(lpis.intid, lpis.target_vcpu, latch, b, vcpu, sstart, send, sptr, fid, True)
        reads = int(_k.count_distinct_bytes(lpis.intid, fid))
        rep = SyncReport(n, int(assigned), reads, 0, err, _NO_PAGES, time.perf_counter() - t0)
    raise GuestMemoryFault(
        gpa, write=False, intid=fid, vcpu=vcpu, report=rep,
        detail="EnableLPIs scan" + (": nothing was assigned" if atomic else " (kernel-exact partial)"),
    )
