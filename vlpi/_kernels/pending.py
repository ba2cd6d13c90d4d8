"""Private kernels of the pending-table engine (see :mod:`vlpi.pending` for the semantics).

Memory-order plan
-----------------
A *plan* lists the targeted LPIs of one VM sorted by (guest byte address, bit, walk tie-break).
It is stored compactly as *runs*: a run is a stretch of plan entries whose LPIs target one vCPU
and whose row indices form an arithmetic progression (``first + k*stride``), or, where no such
progression exists, an explicit list of row indices (``stride == 0``, indices in ``perm_x``).
For the usual layouts (rows in INTID order, targets round-robin or blocked) a vCPU's whole table
is one run, so the plan costs a few bytes per vCPU, not per LPI.

Work units are contiguous ranges of runs that never share a guest byte with another unit, so the
units of all VMs of a host can be processed in one ``prange`` without races.

Flags
-----
Saves never read ``pending_latch``/``hw`` bytes in the merge loops: each call first packs them into
a bit snapshot (``pack_flags``, or the first loop of ``run_units``/``merge_units``), bit *i* of
word *i* // 64 being row *i*. The word paths of the run kernel read those words directly. A
packed LPITable holds its flags in that format already: its rows point at the table's own bits,
there is nothing to pack, and a restore writes the latch bits (``_put_bit``) instead of bytes.

Kernels reach the arrays of many VMs through a uint64 "VM table" of raw addresses (see
``_jit.view_*``); the Python side keeps every owning ndarray alive during the call.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
from numba import prange

from vlpi._kernels._jit import (
    jit,
    nonzero_bytes64,
    pjit,
    popcount64,
    prefetch_r,
    prefetch_w,
    view_i32,
    view_i64,
    view_u8,
    view_u32,
    view_u64,
)
from vlpi._typing import BoolLike, I32Array, I64Array, IntLike, U8Array, U32Array, U64Array

# ------------------------------------------------------------------ VM table columns
P_INTID = 0
P_LATCH = 1
P_HW = 2
P_VPT = 3
VPT_BYTES = 4
P_BASE = 5
P_RUNS = 6
N_RUNS = 7
P_PERMX = 8
N_PERMX = 9
N_LPIS = 10
P_SSTART = 11
P_SEND = 12
P_SPTR = 13
N_SLOTS = 14
N_VCPUS = 15
USE_VPT = 16
ONE_PER_BYTE = 17
P_LBITS = 18  # the call's snapshot of pending_latch, packed: bit i of word i // 64 is row i (+1 pad word)
P_HBITS = 19  # the same for hw (all zero unless the VPT is used: the kernels then read no VPT)
N_BITW = 20  # words of each packed array (pad word included)
FLAGS_PACKED = 21  # 1: a packed LPITable; P_LBITS/P_HBITS are its own bits (restore writes the latch bits),
# P_LATCH/P_HW are unused, and there is nothing to pack
RUNW = 5  # run columns: vCPU, first (row, or perm_x offset), row stride (0: explicit), length, INTID stride
NCOL = 22

NO_ADDR = np.uint64(0xFFFF_FFFF_FFFF_FFFF)

# Typing: numba gives a Python int and an int64 one type; mypy does not. Kernel locals that mix them
# (a counter started at 0 that int64 values are added to) carry ``# type: ignore[assignment]``.
# One VM-table row as views (_views): intid, latch, lbits, hbits, vpt, vpt_bytes, use_vpt, n_vcpus, base, runs,
# perm_x, n_slots, slot starts, slot ends, slot data addresses.
_Views: TypeAlias = tuple[
    U32Array, U8Array, U64Array, U64Array, U8Array, np.int64, np.int64, np.int64, U64Array, I64Array, I32Array,
    np.int64, U64Array, U64Array, U64Array,
]
# (counts [n_jobs, 4], pages, offsets [n_jobs + 1]) of collect, returned by the unit kernels
_Collected: TypeAlias = tuple[I64Array, I64Array, I64Array]
# (writes, vpt_reads, bytes_changed, prev, grp_old, last, wrote) of _lpis
_LpisResult: TypeAlias = tuple[int, int, int, np.uint64, np.int64, np.int64, np.int64]


# ------------------------------------------------------------------ plan building
@jit
def build_runs(perm: npt.NDArray[np.signedinteger[Any]], v_s: I32Array, addr_s: U64Array, intid: U32Array,
               max_run: IntLike, min_strided: IntLike) -> tuple[I64Array, I32Array]:
    """Compress a sorted plan (row index ``perm`` and target ``v_s`` per entry, nondecreasing
    ``addr_s``) into runs ``[v, first, stride, length, intid_stride]`` plus explicit indices.

    Runs are split only where the guest byte changes, so a byte's entries stay in one run or in
    consecutive runs, and always where the 4 KiB guest page changes, so the kernels log dirty
    pages once per run instead of testing every LPI."""
    n = perm.shape[0]
    runs = np.zeros((max(n, 1), RUNW), np.int64)
    perm_x = np.empty(n, np.int32)
    nr = 0
    nx = 0
    k = 0
    while k < n:
        v = v_s[k]
        j = k + 1
        stride = 0
        if j < n and v_s[j] == v:
            stride = perm[j] - perm[k]
            while (
                j < n
                and v_s[j] == v
                and perm[j] - perm[j - 1] == stride
                and (j - k < max_run or addr_s[j] == addr_s[j - 1])
                and (addr_s[j] >> 12) == (addr_s[j - 1] >> 12)
            ):
                j += 1
        if stride != 0 and j - k >= min_strided:
            runs[nr, 0] = v
            runs[nr, 1] = perm[k]
            runs[nr, 2] = stride
            runs[nr, 3] = j - k
            nr += 1
            k = j
            continue
        # one explicit entry; extend the previous explicit run when possible
        if (
            nr > 0
            and runs[nr - 1, 2] == 0
            and runs[nr - 1, 0] == v
            and (runs[nr - 1, 3] < max_run or addr_s[k] == addr_s[k - 1])
            and (addr_s[k] >> 12) == (addr_s[k - 1] >> 12)
        ):
            runs[nr - 1, 3] += 1
        else:
            runs[nr, 0] = v
            runs[nr, 1] = nx
            runs[nr, 2] = 0
            runs[nr, 3] = 1
            nr += 1
        perm_x[nx] = perm[k]
        nx += 1
        k += 1
    # INTID stride of strided runs whose INTIDs are themselves an arithmetic progression (the
    # usual layouts: rows created in INTID order): the kernels then compute each INTID instead of
    # loading it. Measured on host-4096 (two threads): 2.6 -> 2.0 ns/LPI for the save kernel.
    for r in range(nr):
        stride = runs[r, 2]
        length = runs[r, 3]
        if stride == 0 or length < 2:
            continue
        first = runs[r, 1]
        i0 = np.int64(intid[first])
        istr = np.int64(intid[first + stride]) - i0
        ok = True
        for k in range(2, length):
            if np.int64(intid[first + k * stride]) != i0 + k * istr:
                ok = False
                break
        if ok:
            runs[r, 4] = istr
    return runs[:nr].copy(), perm_x[:nx].copy()


# ------------------------------------------------------------------ helpers
@jit(inline="always")
def _find_slot(sstart: U64Array, send: U64Array, nslots: IntLike, addr: IntLike) -> int:
    """Index of the slot containing ``addr`` or -1 (binary search over sorted starts)."""
    lo = np.int64(0)
    hi = np.int64(nslots)
    while lo < hi:
        mid = (lo + hi) >> 1
        if sstart[mid] <= addr:
            lo = mid + 1
        else:
            hi = mid
    s = lo - 1
    if s >= 0 and addr < send[s]:
        return s  # type: ignore[return-value]  # an int64 (numba returns it as an int)
    return -1


@jit(inline="always")
def _views(row: U64Array) -> _Views:
    """The arrays of one VM-table row, as views (no copies). ``latch`` is the caller's byte array
    (restore writes it; empty for a packed table); saves read the packed snapshots
    ``lbits``/``hbits`` instead."""
    n = np.int64(row[N_LPIS])
    nv = np.int64(row[N_VCPUS])
    vb = np.int64(row[VPT_BYTES])
    nslots = np.int64(row[N_SLOTS])
    nbw = np.int64(row[N_BITW])
    return (
        view_u32(row[P_INTID], n),
        view_u8(row[P_LATCH], 0 if row[FLAGS_PACKED] else n),  # a packed table has no latch bytes
        view_u64(row[P_LBITS], nbw),
        view_u64(row[P_HBITS], nbw),
        view_u8(row[P_VPT], max(nv * vb, 1)),  # type: ignore[arg-type]  # max of int64s: an int64
        vb,
        np.int64(row[USE_VPT]),
        nv,
        view_u64(row[P_BASE], nv),
        view_i64(row[P_RUNS], RUNW * np.int64(row[N_RUNS])),
        view_i32(row[P_PERMX], np.int64(row[N_PERMX])),
        nslots,
        view_u64(row[P_SSTART], nslots),
        view_u64(row[P_SEND], nslots),
        view_u64(row[P_SPTR], nslots),
    )


@jit(inline="always")
def _bit(words: U64Array, i: IntLike) -> np.int64:
    """Bit ``i`` of a packed array, as int64 0/1."""
    return np.int64((words[i >> 6] >> np.uint64(i & 63)) & np.uint64(1))


@jit(inline="always")
def _put_bit(words: U64Array, i: IntLike, v: IntLike) -> None:
    """Set bit ``i`` of a packed array to ``v`` (0/1): a restore's latch write in a packed table.
    Restores run one thread per VM, so no other thread writes these words."""
    q = i >> 6
    s = np.uint64(i & 63)
    words[q] = (words[q] & ~(np.uint64(1) << s)) | (np.uint64(v) << s)


@jit(inline="always")
def _set_latch(latch: U8Array, lbits: U64Array, i: IntLike, v: IntLike, packed: BoolLike) -> None:
    """A restore's assignment of row ``i``'s pending_latch: its byte, or a packed table's bit."""
    if packed:
        _put_bit(lbits, i, v)
    else:
        latch[i] = v


@jit(inline="always")
def _wanted(lbits: U64Array, hbits: U64Array, i: IntLike, vbyte: IntLike, bit: IntLike) -> tuple[np.int64, np.int64]:
    """(wanted bit, hw) of row ``i`` in a save: its pending_latch, or where it is hw (the hw bits
    are zero unless the VPT is used) bit ``bit`` of ``vbyte``, its VPT byte (loaded by the caller
    whatever hw is, so the load need not wait for the hw bit)."""
    h = _bit(hbits, i)
    lt = _bit(lbits, i)
    vbit = (np.int64(vbyte) >> bit) & 1
    return lt ^ ((lt ^ vbit) & h), h


# ------------------------------------------------------------------ flag snapshots
@jit(inline="always")
def _pack_row(row: U64Array) -> None:
    if row[FLAGS_PACKED]:  # the table's own bits (and a zero hw array where the VPT is unused)
        return
    n = np.int64(row[N_LPIS])
    nbw = np.int64(row[N_BITW])
    _pack(view_u8(row[P_LATCH], n), view_u64(row[P_LBITS], nbw), n)
    if row[USE_VPT]:
        _pack(view_u8(row[P_HW], n), view_u64(row[P_HBITS], nbw), n)
    else:
        view_u64(row[P_HBITS], nbw)[:] = 0


@pjit
def pack_flags(vmt: U64Array) -> None:
    """Pack every job's ``pending_latch`` (and ``hw`` where the VPT is used) into its bit arrays:
    the call's snapshot. Any nonzero flag byte is True; later writes to the caller's arrays do
    not reach the kernels of this call (what was checked is what is used)."""
    for j in prange(vmt.shape[0]):
        _pack_row(vmt[j])


@jit
def pack_flags_serial(vmt: U64Array) -> None:
    for j in range(vmt.shape[0]):
        _pack_row(vmt[j])


@jit(inline="always")
def _pack(src: U8Array, out: U64Array, n: IntLike) -> None:
    full = n >> 6
    for w in range(full):
        acc = np.uint64(0)
        for b in range(64):
            acc |= np.uint64(src[w * 64 + b] != 0) << np.uint64(b)
        out[w] = acc
    acc = np.uint64(0)
    for b in range(n - full * 64):
        acc |= np.uint64(src[full * 64 + b] != 0) << np.uint64(b)
    out[full] = acc
    for w in range(full + 1, out.shape[0]):
        out[w] = 0


# ------------------------------------------------------------------ fast save
@pjit
def merge_units(vmt: U64Array, units: I64Array, out_pages: U64Array, out_cnt: I64Array, scratch: U8Array,
                restore: BoolLike, pack: BoolLike) -> _Collected:
    """Save (or restore) for plans with runs that straddle memslots: each guest byte is merged in
    a register and written back once. ``units[u] = (vm, run_lo, run_hi, page_offset)``;
    ``out_cnt[u] = (guest_writes, vpt_reads, bytes_changed, n_pages)``. Every address is known to
    be in a slot and no write is needed in a read-only slot (checked by the caller). Units never
    share a guest byte. ``scratch`` is unused (same signature as :func:`run_units`). For restore,
    the entries of one (byte, bit) are in row order, so the first LPI in row order consumes a
    shared bit, as the kernel's sequential sync does. ``pack``: take the flag snapshots of every
    row first (as :func:`pack_flags`), in the same call. Returns :func:`collect` of the outputs."""
    if pack:
        if vmt.shape[0] == 1:  # one VM: packed by this thread (a parallel region of one row
            pack_flags_serial(vmt)  # would cost a second fork/join: ~30 us measured on vm-512)
        else:
            for j in prange(vmt.shape[0]):
                _pack_row(vmt[j])
    for u in prange(units.shape[0]):
        merge_unit(vmt, units, u, out_pages, out_cnt, restore)
    return collect(units, out_cnt, out_pages, vmt.shape[0])


_WB = 256  # write-back queue length (entries)


@jit(inline="always")
def _drain(arr: U8Array, lo: IntLike, qa: U64Array, qv: U8Array, nq: int, out_pages: U64Array, pg0: IntLike,
           npages: int, last_page: np.uint64) -> tuple[int, np.uint64]:
    """Write queued bytes (all in the current slot) and log their pages. No data-dependent
    branches except the page change, which is rare."""
    for q in range(nq):
        a = qa[q]
        arr[a - lo] = qv[q]
        page = a >> np.uint64(12)
        if page != last_page:
            out_pages[pg0 + npages] = page
            npages += 1
            last_page = page
    return npages, last_page


@jit
def merge_unit(vmt: U64Array, units: I64Array, u: IntLike, out_pages: U64Array, out_cnt: I64Array,
               restore: BoolLike) -> None:
    if restore:
        _merge_unit(vmt, units, u, out_pages, out_cnt, True)
    else:
        _merge_unit(vmt, units, u, out_pages, out_cnt, False)


@jit(inline="always")
def _merge_unit(vmt: U64Array, units: I64Array, u: IntLike, out_pages: U64Array, out_cnt: I64Array,
                restore: BoolLike) -> None:
    # Branch-free merge: with about half the bits changing, "does this bit change?" and
    # "does this byte change?" are coin flips; as branches they are mispredicted half the time.
    # The bit update is arithmetic, and changed bytes are appended to a queue (index advanced by
    # 0 or 1) that is written back in a loop without data-dependent branches. ``restore`` is a
    # constant at each call site. For restore, "a bit was consumed" and "the byte changed" are the
    # same condition (consumed bits only go 1 -> 0), so ``wrote`` serves both.
    j = units[u, 0]
    intid, latch, lbits, hbits, vpt, vb, use_vpt, nv, base, runs, permx, nslots, sstart, send, sptr = _views(vmt[j])
    packed = vmt[j, FLAGS_PACKED] != 0
    pg0 = units[u, 3]

    qa = np.empty(_WB + 1, np.uint64)
    qv = np.empty(_WB + 1, np.uint8)
    nq = 0
    writes = 0
    vpt_reads = 0
    changed = 0
    npages = 0
    last_page = NO_ADDR
    cur = NO_ADDR
    lo = np.uint64(1)
    hi = np.uint64(0)
    arr = np.empty(0, np.uint8)
    old = np.int64(0)
    val = np.int64(0)
    wrote = np.int64(0)
    for r in range(units[u, 1], units[u, 2]):
        v = runs[RUNW * r]
        first = runs[RUNW * r + 1]
        stride = runs[RUNW * r + 2]
        length = runs[RUNW * r + 3]
        b = base[v]
        vrow = v * vb
        for k in range(length):
            if stride != 0:
                i = first + k * stride
            else:
                i = permx[first + k]
            iid = np.int64(intid[i])
            addr = b + np.uint64(iid >> 3)
            if addr != cur:
                # close the previous byte: queue it if any of its bits was written
                qa[nq] = cur
                qv[nq] = val
                nq += wrote  # type: ignore[assignment]  # int and int64: one type in numba
                changed += val != old
                if not (lo <= addr and addr < hi):
                    npages, last_page = _drain(arr, lo, qa, qv, nq, out_pages, pg0, npages, last_page)
                    nq = 0
                    s = _find_slot(sstart, send, nslots, addr)
                    lo = sstart[s]
                    hi = send[s]
                    arr = view_u8(sptr[s], hi - lo)
                elif nq >= _WB:
                    npages, last_page = _drain(arr, lo, qa, qv, nq, out_pages, pg0, npages, last_page)
                    nq = 0
                cur = addr
                old = np.int64(arr[addr - lo])
                val = old
                wrote = 0  # type: ignore[assignment]  # int and int64: one type in numba
            bit = iid & 7
            if restore:
                diff = (val >> bit) & 1
                _set_latch(latch, lbits, i, diff, packed)
            else:
                want, h = _wanted(lbits, hbits, i, vpt[min(vrow + (iid >> 3), vpt.shape[0] - 1)], bit)
                diff = ((val >> bit) & 1) ^ want
                vpt_reads += h  # type: ignore[assignment]  # int and int64: one type in numba
            val ^= diff << bit
            writes += diff  # type: ignore[assignment]  # int and int64: one type in numba
            wrote |= diff
    qa[nq] = cur
    qv[nq] = val
    nq += wrote  # type: ignore[assignment]  # int and int64: one type in numba
    changed += val != old
    npages, last_page = _drain(arr, lo, qa, qv, nq, out_pages, pg0, npages, last_page)
    out_cnt[u, 0] = writes
    out_cnt[u, 1] = vpt_reads
    out_cnt[u, 2] = changed
    out_cnt[u, 3] = npages


# ------------------------------------------------------------------ fault scans
@jit
def first_fault(vmrow: U64Array, run_lo: IntLike, run_hi: IntLike, mode: IntLike, walk_key_is_intid: BoolLike,
                sro: U8Array) -> tuple[int, int, IntLike]:
    """Earliest faulting access of one VM's plan, in walk order, without changing anything.

    mode 0 (save): a read faults for every entry at an unmapped address; a write faults for an
    entry in a read-only slot whose wanted bit differs from the stored one (nothing in a
    read-only slot ever changes before the first fault). mode 1 (restore, row order): a read
    faults as for save; a write faults for an entry in a read-only slot whose stored bit is 1.

    Returns (row index, is_write, gpa) of the earliest fault, or (-1, 0, 0)."""
    intid, latch, lbits, hbits, vpt, vb, use_vpt, nv, base, runs, permx, nslots, sstart, send, sptr = _views(vmrow)

    best_key = np.int64(1) << 62
    best_i = -1
    best_w = 0
    best_gpa = np.uint64(0)
    for r in range(run_lo, run_hi):
        v = runs[RUNW * r]
        first = runs[RUNW * r + 1]
        stride = runs[RUNW * r + 2]
        length = runs[RUNW * r + 3]
        b = base[v]
        for k in range(length):
            if stride != 0:
                i = first + k * stride
            else:
                i = permx[first + k]
            iid = intid[i]
            addr = b + np.uint64(iid >> 3)
            key = np.int64(iid) if walk_key_is_intid else np.int64(i)
            if key >= best_key:
                continue
            s = _find_slot(sstart, send, nslots, addr)
            if s < 0:
                best_key = key
                best_i = i
                best_w = 0
                best_gpa = addr
                continue
            if sro[s] == 0:
                continue
            bit = iid & 7
            stored = (view_u8(sptr[s], send[s] - sstart[s])[addr - sstart[s]] >> bit) & 1
            if mode == 0:
                want, _h = _wanted(lbits, hbits, i, vpt[min(v * vb + (iid >> 3), vpt.shape[0] - 1)], bit)
                fault = want != stored
            else:
                fault = stored == 1
            if fault:
                best_key = key
                best_i = i
                best_w = 1
                best_gpa = addr
    return best_i, best_w, best_gpa


# ------------------------------------------------------------------ EnableLPIs scan
@jit
def scan_table(intid: U32Array, target: npt.NDArray[np.signedinteger[Any]], latch: U8Array, b: IntLike, vcpu: IntLike,
               sstart: U64Array, send: U64Array, sptr: U64Array, limit_intid: IntLike,
               apply: BoolLike) -> tuple[int, int]:
    """EnableLPIs 0->1 scan of one vCPU's table (row order; result does not depend on order).

    First finds the smallest INTID whose byte ``b + intid//8`` is unmapped (every LPI's byte is
    read, whatever its target). If ``apply``: assigns ``pending_latch`` of LPIs that target
    ``vcpu`` and have ``intid < limit_intid``. Returns (fault row or -1, n_assigned)."""
    n = intid.shape[0]
    nslots = sstart.shape[0]
    lo = np.uint64(1)
    hi = np.uint64(0)
    arr = np.empty(0, np.uint8)
    fault_i = -1
    fault_id = np.int64(1) << 40
    assigned = 0
    for i in range(n):
        iid = intid[i]
        addr = b + np.uint64(iid >> 3)
        if not (lo <= addr and addr < hi):
            s = _find_slot(sstart, send, nslots, addr)
            if s < 0:
                if np.int64(iid) < fault_id:
                    fault_id = np.int64(iid)
                    fault_i = i
                continue
            lo = sstart[s]
            hi = send[s]
            arr = view_u8(sptr[s], hi - lo)
        if apply and target[i] == vcpu and np.int64(iid) < limit_intid:
            latch[i] = (arr[addr - lo] >> (iid & 7)) & 1
            assigned += 1
    return fault_i, assigned


@jit
def count_distinct_bytes(intid: U32Array, limit_intid: IntLike) -> int:
    """Number of distinct ``intid // 8`` among INTIDs <= limit_intid (reads of the EnableLPIs
    scan, whose byte cache is keyed on the byte offset and walks INTID order)."""
    n = intid.shape[0]
    if n == 0:
        return 0
    mx = 0
    for i in range(n):
        if intid[i] > mx:
            mx = intid[i]
    seen = np.zeros((mx >> 3) + 1, np.uint8)
    c = 0
    for i in range(n):
        iid = intid[i]
        if np.int64(iid) <= limit_intid:
            o = iid >> 3
            if seen[o] == 0:
                seen[o] = 1
                c += 1
    return c


# ------------------------------------------------------------------ run kernel (the fast path)
# Each run walks one vCPU's table in address order, within one 4 KiB page, and does the kernel's
# read-modify-write per LPI directly in guest memory. LPIs that share a byte (or, through aliasing
# tables, a bit) are consecutive in the plan and processed in plan order by one thread, so the
# result is the kernel's: the stored bit ends as the last LPI's wanted state and a write is
# counted per transition. A byte is re-read after its own store (store-to-load forwarding), so no
# merge state is carried.
#
# Three paths, chosen per run by its layout (see _run_unit): whole 64-bit words for runs with one
# LPI per word at one bit (round-robin over 64 vCPUs) and for dense runs (64 LPIs per word), and
# the per-LPI loop for everything else. Measured on host-4096, one VM's kernel on one thread with
# the tables in cache (AMD EPYC, 2026-12-01): per-LPI path 1.39 ns/LPI, word path 0.31-0.33
# (LLVM vectorises it with AVX-512 masked stores; it stops vectorising if the VPT view aliases the
# guest words, hence the separate loop without VPT, or with a non-unit stride, hence the
# branch-free scalar loop for those). At host scale the kernel is memory-bound: prefetching the
# next run's lines took host-4096's save from 3.0 to 2.7 ms and restore from 7.9 to 5.9 ms.
# The per-LPI store is branch-free: an unchanged byte is "stored" into a per-unit scratch byte
# instead (address select), so untouched guest pages stay uncommitted and clean cache lines stay
# clean; the word path uses a masked store for the same reason (and never writes a read-only slot
# whose bits need no change).
@pjit
def run_units(vmt: U64Array, units: I64Array, out_pages: U64Array, out_cnt: I64Array, scratch: U8Array,
              restore: BoolLike, pack: BoolLike) -> _Collected:
    """Save (or restore) by runs. Every run lies in one memslot and no access faults (checked by
    the caller). ``out_cnt[u] = (writes, vpt_reads, bytes_changed, n_pages)``. ``pack``: take the
    flag snapshots of every row first (as :func:`pack_flags`): one parallel call instead of two.
    Returns :func:`collect` of the outputs (the caller's next step, without a second call)."""
    if pack:
        if vmt.shape[0] == 1:  # one VM: packed by this thread (a parallel region of one row
            pack_flags_serial(vmt)  # would cost a second fork/join: ~30 us measured on vm-512)
        else:
            for j in prange(vmt.shape[0]):
                _pack_row(vmt[j])
    for u in prange(units.shape[0]):  # prange's index is unsigned: pass an int64 so run_unit is
        run_unit(vmt, units, np.int64(u), out_pages, out_cnt, scratch, restore)  # compiled once
    return collect(units, out_cnt, out_pages, vmt.shape[0])


@jit
def run_unit(vmt: U64Array, units: I64Array, u: IntLike, out_pages: U64Array, out_cnt: I64Array, scratch: U8Array,
             restore: BoolLike) -> None:
    j = units[u, 0]
    if restore:  # restore reports no bytes_changed
        if vmt[j, FLAGS_PACKED]:
            _run_unit(vmt, units, u, out_pages, out_cnt, scratch, True, False, True)
        else:
            _run_unit(vmt, units, u, out_pages, out_cnt, scratch, True, False, False)
    elif vmt[j, ONE_PER_BYTE]:
        _run_unit(vmt, units, u, out_pages, out_cnt, scratch, False, False, False)
    else:
        _run_unit(vmt, units, u, out_pages, out_cnt, scratch, False, True, False)


@jit(inline="always")
def _run_unit(vmt: U64Array, units: I64Array, u: IntLike, out_pages: U64Array, out_cnt: I64Array, scratch: U8Array,
              restore: BoolLike, track_bytes: BoolLike, packed: BoolLike) -> None:
    # ``restore``, ``track_bytes`` and ``packed`` (a restore writes latch bits, not bytes) are
    # constants at each call site, so each variant compiles without the branches it does not need.
    # Without shared bytes (``track_bytes`` False), bytes changed = writes: measured 0.45 ns/LPI
    # saved on host-4096 (one thread, 5.6 -> 5.2).
    j = units[u, 0]
    intid, latch, lbits, hbits, vpt, vb, use_vpt, nv, base, runs, permx, nslots, sstart, send, sptr = _views(vmt[j])
    vlim = vpt.shape[0] - 1
    pg0 = units[u, 3]
    sp = scratch.ctypes.data + np.uint64(u * 64)
    vbase = vmt[j, P_VPT]
    vend = vbase + np.uint64(vpt.shape[0])
    lbase = vmt[j, P_LATCH]
    writes = 0
    vpt_reads = 0
    changed = 0
    npages = 0
    last_page = NO_ADDR
    prev = NO_ADDR  # guest address of the current byte group (track_bytes)
    grp_old = np.int64(0)  # its value before this call
    last = np.int64(0)  # its value now
    for r in range(units[u, 1], units[u, 2]):
        if r + 1 < units[u, 2]:
            _prefetch_run(runs, r + 1, intid, base, sstart, send, sptr, nslots, vbase, vb, use_vpt and not restore)
        v = runs[RUNW * r]
        first = runs[RUNW * r + 1]
        stride = runs[RUNW * r + 2]
        length = runs[RUNW * r + 3]
        istr = runs[RUNW * r + 4]
        b = base[v]
        i0 = first if stride != 0 else permx[first]
        iid0 = np.int64(intid[i0])
        a0 = b + np.uint64(iid0 >> 3)
        s = _find_slot(sstart, send, nslots, a0)
        lo = sptr[s]
        hbase = lo + (b - sstart[s])  # host address of this vCPU's table byte 0
        vrow = v * vb
        wrote = np.int64(0)
        # VPT bytes of the run's first and last LPI in range: the word paths may then read the
        # VPT words between them (hw LPIs' VPT bytes were validated; this guards the rest)
        vlast = vrow + ((iid0 + (length - 1) * istr) >> 3)
        vpt_ok = restore or use_vpt == 0 or (vrow + (iid0 >> 3) >= 0 and vlast <= vlim)
        # Which LPIs of the run merge a word at a time: [kh, kt) in ``mode`` 1 (one LPI per word)
        # or 2 (64 LPIs per word); the LPIs before and after go through the per-LPI path.
        mode = 0
        kh = length
        kt = length
        w1 = np.uint64(0)  # mode 2: first whole word, and the host bit address of its VPT bit
        vlo = np.uint64(0)
        if stride != 0 and istr > 0 and (istr & 63) == 0 and length >= 3 and vpt_ok:
            # ---- one LPI per 64-bit word, the same bit in each (round-robin targets over a
            # multiple of 64 vCPUs, e.g. host-4096): the wanted bits are merged a word at a time,
            # LPIs across SIMD lanes. The first and last LPI go through the per-LPI path: their
            # words may hold bytes of neighbouring runs (another thread's) or lie past the slot;
            # the words in between hold no byte of any other LPI and lie inside the run.
            mode = 1
            kh = 1
            kt = length - 1
        elif stride == 1 and istr == 1 and length >= 192 and vpt_ok:
            # ---- consecutive rows own consecutive INTIDs (a dense table, blocked targets): 64
            # LPIs per guest word. Whole words strictly after the first LPI's byte and before the
            # last LPI's byte hold bits of this run only (the end LPIs' bytes may be shared with a
            # neighbouring run through overlapping tables, so those go through the per-LPI path).
            gb0 = (hbase + np.uint64(iid0 >> 3)) * np.uint64(8) + np.uint64(iid0 & 7)  # host bit address
            w1 = (gb0 + np.uint64(64)) >> np.uint64(6)  # first whole word
            w2 = (gb0 + np.uint64(length - 1)) >> np.uint64(6)  # end of the whole words
            dh = np.int64((w1 << np.uint64(6)) - gb0)  # LPIs before the first whole word
            dt = np.int64((w2 << np.uint64(6)) - gb0)  # LPIs before the tail
            vlo = (vbase + np.uint64(vrow + (iid0 >> 3))) * np.uint64(8) + np.uint64((iid0 & 7) + dh)
            # the words the VPT windows read must lie in the VPT array
            if (not use_vpt) or restore or (
                (vlo >> np.uint64(6)) >= (vbase + np.uint64(7)) >> np.uint64(3)
                and ((vlo + np.uint64(dt - dh - 1)) >> np.uint64(6)) + np.uint64(1) <= vend >> np.uint64(3)
            ):
                mode = 2
                kh = dh
                kt = dt
        if mode == 0 and not track_bytes and stride != 0 and istr > 0 and (istr & 7) == 0 and vpt_ok:
            # Arithmetic run with a whole-byte INTID stride below 8 bytes: the bit is the same for
            # every LPI, and the guest byte, VPT byte and LPI rows advance by fixed steps, so every
            # address is a running pointer. The VPT pointer only moves when the VPT is read.
            bit = iid0 & 7
            bstep = np.uint64(istr >> 3)
            ha = hbase + np.uint64(iid0 >> 3)
            va = vbase + np.uint64(min(vrow + (iid0 >> 3), vlim))
            vstep = bstep * np.uint64(use_vpt)
            i = first
            for _k in range(length):
                old = np.int64(view_u8(ha, 1)[0])
                if restore:
                    diff = (old >> bit) & 1
                    _set_latch(latch, lbits, i, diff, packed)
                else:
                    want, h = _wanted(lbits, hbits, i, view_u8(va, 1)[0], bit)
                    diff = ((old >> bit) & 1) ^ want
                    vpt_reads += h  # type: ignore[assignment]  # int and int64: one type in numba
                last = old ^ (diff << bit)
                view_u8(sp + (ha - sp) * np.uint64(diff), 1)[0] = last
                writes += diff  # type: ignore[assignment]  # int and int64: one type in numba
                wrote |= diff
                ha += bstep
                va += vstep
                i += stride
        else:
            w, vr, ch, prev, grp_old, last, wr = _lpis(
                0, kh, first, stride, iid0, istr, b, hbase, vrow, permx, intid, latch, lbits, hbits, vpt,
                vlim, sp, prev, grp_old, last, restore, track_bytes, packed,
            )
            writes += w
            vpt_reads += vr
            changed += ch
            wrote |= wr
            if mode == 1:
                ga = hbase + np.uint64((iid0 + istr) >> 3)  # host byte of LPI 1
                va = vbase + np.uint64(vrow + ((iid0 + istr) >> 3)) if use_vpt else ga
                w, vr, wr = _word_run(ga, va, iid0 & 7, istr >> 3, first + stride, stride, length - 2, latch,  # type: ignore[assignment]  # int/int64
                                      lbase, lbits, hbits, use_vpt, restore, packed, sp)
                ch = w  # one LPI per byte, bytes shared with no other run
            elif mode == 2:
                w, vr, ch, wr = _dense_words(w1, (kt - kh) >> 6, first + kh, vlo, use_vpt, lbase, latch, lbits,  # type: ignore[assignment]  # int/int64
                                             hbits, restore, packed)  # ch: whole bytes of this run only
            if mode != 0:
                writes += w
                vpt_reads += vr
                wrote |= wr
                if track_bytes:
                    changed += ch
            w, vr, ch, prev, grp_old, last, wr = _lpis(
                kt, length, first, stride, iid0, istr, b, hbase, vrow, permx, intid, latch, lbits, hbits, vpt,
                vlim, sp, prev, grp_old, last, restore, track_bytes, packed,
            )
            writes += w
            vpt_reads += vr
            changed += ch
            wrote |= wr
        # a run never crosses a 4 KiB guest page (build_runs), so its page is a0's
        page = a0 >> np.uint64(12)
        if wrote and page != last_page:
            out_pages[pg0 + npages] = page
            npages += 1
            last_page = page
    if track_bytes:
        if prev != NO_ADDR:
            changed += last != grp_old
    else:
        changed = writes
    out_cnt[u, 0] = writes
    out_cnt[u, 1] = vpt_reads
    out_cnt[u, 2] = changed
    out_cnt[u, 3] = npages


@jit(inline="always")
def _prefetch_run(runs: I64Array, q: int, intid: U32Array, base: U64Array, sstart: U64Array, send: U64Array,
                  sptr: U64Array, nslots: IntLike, vbase: IntLike, vb: IntLike, with_vpt: IntLike | BoolLike) -> None:
    """Ask for the cache lines of run ``q`` (an arithmetic run: guest table, and VPT for a save)
    while the current run is processed. Each run starts a new 4 KiB page, where the hardware
    prefetcher would otherwise wait for a few misses before streaming; at host scale these
    misses dominated the run kernel. Prefetches are hints: they never fault or change memory."""
    stride = runs[RUNW * q + 2]
    istr = runs[RUNW * q + 4]
    if stride == 0 or istr <= 0:
        return
    v = runs[RUNW * q]
    iid0 = np.int64(intid[runs[RUNW * q + 1]])
    span = np.uint64(((iid0 + (runs[RUNW * q + 3] - 1) * istr) >> 3) - (iid0 >> 3))
    a0 = base[v] + np.uint64(iid0 >> 3)
    s = _find_slot(sstart, send, nslots, a0)
    if s < 0:
        return
    h = (sptr[s] + (a0 - sstart[s])) & ~np.uint64(63)
    end = sptr[s] + (a0 - sstart[s]) + span
    while h <= end:
        prefetch_w(h)  # type: ignore[call-arg]  # an intrinsic: typed as numba calls it
        h += np.uint64(64)
    if with_vpt:
        h = (vbase + np.uint64(v * vb + (iid0 >> 3))) & ~np.uint64(63)
        end = vbase + np.uint64(v * vb + (iid0 >> 3)) + span
        while h <= end:
            prefetch_r(h)  # type: ignore[call-arg]  # an intrinsic: typed as numba calls it
            h += np.uint64(64)


@jit(inline="always")
def _lpis(k_lo: IntLike, k_hi: IntLike, first: IntLike, stride: IntLike, iid0: IntLike, istr: IntLike, b: IntLike,
          hbase: IntLike, vrow: IntLike, permx: I32Array, intid: U32Array, latch: U8Array, lbits: U64Array,
          hbits: U64Array, vpt: U8Array, vlim: IntLike, sp: IntLike, prev: np.uint64, grp_old: np.int64,
          last: np.int64, restore: BoolLike, track_bytes: BoolLike, packed: BoolLike) -> _LpisResult:
    """LPIs ``k_lo..k_hi`` of a run, one at a time, in plan order: read-modify-write of the guest
    byte in place (re-read after its own store, so LPIs sharing a byte need no merge state).
    Returns (writes, vpt_reads, bytes_changed, prev, grp_old, last, wrote); the byte-group state
    (``prev``, ``grp_old``, ``last``) carries across runs when ``track_bytes``."""
    writes = 0
    vpt_reads = 0
    changed = 0
    wrote = np.int64(0)
    for k in range(k_lo, k_hi):
        if stride != 0:
            i = first + k * stride
        else:
            i = permx[first + k]
        if istr != 0:  # constant per run: well predicted
            iid = iid0 + k * istr
        else:
            iid = np.int64(intid[i])
        byte = iid >> 3
        bit = iid & 7
        ha = hbase + np.uint64(byte)
        old = np.int64(view_u8(ha, 1)[0])
        if track_bytes:
            ga = b + np.uint64(byte)
            if ga != prev:
                if prev != NO_ADDR:
                    changed += last != grp_old
                prev = ga
                grp_old = old
        if restore:
            diff = (old >> bit) & 1
            _set_latch(latch, lbits, i, diff, packed)
        else:
            # the VPT byte's index is clamped into the array (validation guarantees hw LPIs are
            # in range); the byte is selected only where the LPI is hw
            want, h = _wanted(lbits, hbits, i, vpt[min(vrow + byte, vlim)], bit)  # type: ignore[arg-type]  # one element: numpy's stubs type the mixed-int index as possibly an array
            diff = ((old >> bit) & 1) ^ want
            vpt_reads += h  # type: ignore[assignment]  # int and int64: one type in numba
        last = old ^ (diff << bit)
        view_u8(sp + (ha - sp) * np.uint64(diff), 1)[0] = last
        writes += diff  # type: ignore[assignment]  # int and int64: one type in numba
        wrote |= diff
    return writes, vpt_reads, changed, prev, grp_old, last, wrote


@jit(inline="always")
def _word_run(ga: IntLike, va: IntLike, bit: IntLike, bstep: IntLike, i1: IntLike, stride: IntLike, m: IntLike,
              latch: U8Array, lbase: IntLike, lbits: U64Array, hbits: U64Array, use_vpt: IntLike, restore: BoolLike,
              packed: BoolLike, sp: IntLike) -> tuple[IntLike, IntLike, IntLike]:
    """``m`` LPIs of a run whose guest bytes ``ga + k*bstep`` (``bstep`` a multiple of 8) hold each
    LPI alone in its 64-bit word, at the same bit; ``va`` is the first VPT byte (or ``ga`` when
    the VPT is not read); ``i1`` the first row, ``stride`` the row step. Every word between the
    first and last byte is inside the run's slot (and VPT row) and holds no other LPI's byte.
    ``sp`` is a scratch address for branch-free stores. Returns (writes, vpt_reads, wrote).

    With consecutive words and rows 64 apart (round-robin targets over 64 vCPUs: host-4096) the
    loop has unit strides everywhere and LLVM vectorises it: 8 LPIs per AVX-512 instruction, the
    conditional store a masked store. Other strides run one LPI per iteration, branch-free."""
    one = np.uint64(1)
    sg = ((ga & np.uint64(7)) << np.uint64(3)) + np.uint64(bit)
    sv = ((va & np.uint64(7)) << np.uint64(3)) + np.uint64(bit)
    ws = np.int64(bstep >> 3)
    gw0 = ga & ~np.uint64(7)
    writes = np.uint64(0)
    vreads = np.uint64(0)
    wrote = np.uint64(0)
    if restore:
        if ws == 1 and stride == 64:
            g = view_u64(gw0, m)
            if packed:  # row i1 + 64k is bit ls of latch word (i1 >> 6) + k
                q0 = i1 >> 6
                lw = lbits[q0 : q0 + m]
                ls = np.uint64(i1 & 63)
                keep = ~(one << ls)
                for k in range(m):
                    old = g[k]
                    ob = (old >> sg) & one
                    lw[k] = (lw[k] & keep) | (ob << ls)
                    if ob:
                        g[k] = old & ~(one << sg)
                    writes += ob
                return np.int64(writes), 0, np.int64(writes != 0)
            lat = view_u8(lbase + np.uint64(i1), (m - 1) * 64 + 1)
            for k in range(m):
                old = g[k]
                ob = (old >> sg) & one
                lat[k * 64] = np.uint8(ob)
                if ob:
                    g[k] = old & ~(one << sg)
                writes += ob
            return np.int64(writes), 0, np.int64(writes != 0)
        wa = gw0
        i = i1
        for _k in range(m):
            old = view_u64(wa, 1)[0]
            ob = (old >> sg) & one
            _set_latch(latch, lbits, i, ob, packed)
            view_u64(sp + (wa - sp) * ob, 1)[0] = old & ~(ob << sg)
            writes += ob
            wa += np.uint64(bstep)
            i += stride
        return np.int64(writes), 0, np.int64(writes != 0)
    vw0 = va & ~np.uint64(7)
    if ws == 1 and stride == 64:
        g = view_u64(gw0, m)
        vw = view_u64(vw0, m)
        q0 = i1 >> 6
        lw = lbits[q0 : q0 + m]
        hw = hbits[q0 : q0 + m]
        ls = np.uint64(i1 & 63)
        if not use_vpt:  # (the VPT view would alias the guest words and stop vectorisation)
            for k in range(m):
                want = (lw[k] >> ls) & one
                old = g[k]
                diff = ((old >> sg) & one) ^ want
                if diff:
                    g[k] = old ^ (diff << sg)
                writes += diff
            return np.int64(writes), 0, np.int64(writes != 0)
        for k in range(m):
            lt = (lw[k] >> ls) & one
            hh = (hw[k] >> ls) & one
            vbit = (vw[k] >> sv) & one
            want = lt ^ ((lt ^ vbit) & hh)
            old = g[k]
            diff = ((old >> sg) & one) ^ want
            if diff:
                g[k] = old ^ (diff << sg)
            writes += diff
            vreads += hh
        return np.int64(writes), np.int64(vreads), np.int64(writes != 0)  # (a third reduction costs ~5%)
    wa = gw0
    vwa = vw0
    i = i1
    for _k in range(m):
        lt = (lbits[i >> 6] >> np.uint64(i & 63)) & one
        hh = (hbits[i >> 6] >> np.uint64(i & 63)) & one
        vbit = (view_u64(vwa, 1)[0] >> sv) & one
        want = lt ^ ((lt ^ vbit) & hh)
        old = view_u64(wa, 1)[0]
        diff = ((old >> sg) & one) ^ want
        view_u64(sp + (wa - sp) * diff, 1)[0] = old ^ (diff << sg)
        writes += diff
        vreads += hh
        wrote |= diff
        wa += np.uint64(bstep)
        vwa += np.uint64(bstep)
        i += stride
    return np.int64(writes), np.int64(vreads), np.int64(wrote)


@jit(inline="always")
def _window(words: U64Array, p: IntLike, sh: IntLike) -> IntLike:
    """64 bits of a packed array starting at bit ``p`` (``sh == p & 63``, constant per run)."""
    q = p >> np.uint64(6)
    if sh == 0:
        return words[q]  # type: ignore[no-any-return]  # numpy types an element read as Any
    return (words[q] >> sh) | (words[q + np.uint64(1)] << (np.uint64(64) - sh))  # type: ignore[no-any-return]  # as above


@jit(inline="always")
def _put_window(words: U64Array, p: IntLike, val: IntLike) -> None:
    """Store ``val`` as the 64 bits of a packed array starting at bit ``p`` (the inverse of
    :func:`_window`)."""
    q = p >> np.uint64(6)
    sh = p & np.uint64(63)
    if sh == 0:
        words[q] = val
        return
    low = (np.uint64(1) << sh) - np.uint64(1)  # bits below p in word q
    words[q] = (words[q] & low) | (val << sh)
    words[q + np.uint64(1)] = (words[q + np.uint64(1)] & ~low) | (val >> (np.uint64(64) - sh))


@jit(inline="always")
def _dense_words(w1: IntLike, nw: IntLike, i1: IntLike, vlo: IntLike, use_vpt: IntLike, lbase: IntLike, latch: U8Array,
                 lbits: U64Array, hbits: U64Array, restore: BoolLike,
                 packed: BoolLike) -> tuple[IntLike, IntLike, IntLike, IntLike]:
    """``nw`` whole guest words (host word index ``w1`` on) whose 64 bits belong to consecutive
    rows ``i1, i1 + 1, ...`` (one LPI per bit). ``vlo`` is the host bit address of the first
    row's VPT bit. Returns (writes, vpt_reads, bytes_changed, wrote)."""
    g = view_u64(w1 << np.uint64(3), nw)
    writes = np.uint64(0)
    vreads = np.uint64(0)
    changed = np.uint64(0)
    if restore:
        lat = view_u8(lbase + np.uint64(i1), 0 if packed else nw * 64)
        for w in range(nw):
            old = g[w]
            if packed:  # rows i1 + 64w .. + 63: a 64-bit window of the latch bits
                _put_window(lbits, np.uint64(i1 + w * 64), old)
            else:
                for b in range(64):
                    lat[w * 64 + b] = np.uint8((old >> np.uint64(b)) & np.uint64(1))
            if old:
                g[w] = 0
            writes += popcount64(old)  # type: ignore[call-arg]  # an intrinsic: typed as numba calls it
            changed += nonzero_bytes64(old)
        return np.int64(writes), 0, np.int64(changed), np.int64(writes != 0)
    sh = np.uint64(i1 & 63)
    vsh = vlo & np.uint64(63)
    nvw = np.int64(((vlo + np.uint64(nw * 64 - 1)) >> np.uint64(6)) - (vlo >> np.uint64(6))) + 1
    vw = view_u64((vlo >> np.uint64(6)) << np.uint64(3), nvw) if use_vpt else g
    for w in range(nw):
        p = np.uint64(i1 + w * 64)
        lt = _window(lbits, p, sh)
        hh = _window(hbits, p, sh)
        if use_vpt:
            vbits = _window(vw, vsh + np.uint64(w * 64), vsh)
        else:
            vbits = np.uint64(0)
        want = lt ^ ((lt ^ vbits) & hh)
        old = g[w]
        diff = old ^ want
        if diff:
            g[w] = want
        writes += popcount64(diff)  # type: ignore[call-arg]  # an intrinsic: typed as numba calls it
        vreads += popcount64(hh)
        changed += nonzero_bytes64(diff)
    return np.int64(writes), np.int64(vreads), np.int64(changed), np.int64(writes != 0)


# ------------------------------------------------------------------ serial drivers
# For small batches: waking the thread pool costs more than the work (see _config: measured
# 0.38 ms serial vs 7.4-15 ms parallel for 4 VMs x 8192 LPIs on a busy 2-core machine).
@jit
def run_units_serial(vmt: U64Array, units: I64Array, out_pages: U64Array, out_cnt: I64Array, scratch: U8Array,
                     restore: BoolLike, pack: BoolLike) -> _Collected:
    if pack:
        pack_flags_serial(vmt)
    for u in range(units.shape[0]):
        run_unit(vmt, units, u, out_pages, out_cnt, scratch, restore)
    return collect(units, out_cnt, out_pages, vmt.shape[0])


@jit
def merge_units_serial(vmt: U64Array, units: I64Array, out_pages: U64Array, out_cnt: I64Array, scratch: U8Array,
                       restore: BoolLike, pack: BoolLike) -> _Collected:
    if pack:
        pack_flags_serial(vmt)
    for u in range(units.shape[0]):
        merge_unit(vmt, units, u, out_pages, out_cnt, restore)
    return collect(units, out_cnt, out_pages, vmt.shape[0])


@jit
def collect(units: I64Array, out_cnt: I64Array, out_pages: U64Array, n_jobs: IntLike) -> _Collected:
    """Per-job counts and deduplicated dirty pages from the per-unit outputs (units are grouped
    by job and in address order, so a job's repeated page is always the previous one).
    Returns (counts [n_jobs, 4], pages, offsets [n_jobs + 1])."""
    counts = np.zeros((n_jobs, 4), np.int64)
    total = 0
    for u in range(units.shape[0]):
        total += out_cnt[u, 3]
    pages = np.empty(total, np.int64)
    ends = np.full(n_jobs, -1, np.int64)
    k = 0
    cur = -1
    start = 0
    for u in range(units.shape[0]):
        j = units[u, 0]
        if j != cur:
            cur = j
            start = k
        counts[j, 0] += out_cnt[u, 0]
        counts[j, 1] += out_cnt[u, 1]
        counts[j, 2] += out_cnt[u, 2]
        for q in range(out_cnt[u, 3]):
            p = np.int64(out_pages[units[u, 3] + q])
            if k > start and pages[k - 1] == p:
                continue
            pages[k] = p
            k += 1
        ends[j] = k
    offsets = np.zeros(n_jobs + 1, np.int64)
    for j in range(n_jobs):
        offsets[j + 1] = ends[j] if ends[j] >= 0 else offsets[j]
        counts[j, 3] = offsets[j + 1] - offsets[j]
    return counts, pages[:k], offsets
