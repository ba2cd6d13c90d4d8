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

Kernels reach the arrays of many VMs through a uint64 "VM table" of raw addresses (see
``_jit.view_*``); the Python side keeps every owning ndarray alive during the call.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from vlpi._kernels._jit import jit, pjit, view_i32, view_i64, view_u8, view_u32, view_u64

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
RUNW = 5  # run columns: vCPU, first (row, or perm_x offset), row stride (0: explicit), length, INTID stride
NCOL = 18

NO_ADDR = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


# ------------------------------------------------------------------ plan building
@jit
def build_runs(perm, v_s, addr_s, intid, max_run, min_strided):
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
def _find_slot(sstart, send, nslots, addr):
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
        return s
    return -1


@jit(inline="always")
def _views(row):
    """The arrays of one VM-table row, as views (no copies)."""
    n = np.int64(row[N_LPIS])
    nv = np.int64(row[N_VCPUS])
    vb = np.int64(row[VPT_BYTES])
    nslots = np.int64(row[N_SLOTS])
    return (
        view_u32(row[P_INTID], n),
        view_u8(row[P_LATCH], n),
        view_u8(row[P_HW], n),
        view_u8(row[P_VPT], max(nv * vb, 1)),
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


# ------------------------------------------------------------------ fast save
@pjit
def merge_units(vmt, units, out_pages, out_cnt, scratch, restore):
    """Save (or restore) for plans with runs that straddle memslots: each guest byte is merged in
    a register and written back once. ``units[u] = (vm, run_lo, run_hi, page_offset)``;
    ``out_cnt[u] = (guest_writes, vpt_reads, bytes_changed, n_pages)``. Every address is known to
    be in a slot and no write is needed in a read-only slot (checked by the caller). Units never
    share a guest byte. ``scratch`` is unused (same signature as :func:`run_units`). For restore,
    the entries of one (byte, bit) are in row order, so the first LPI in row order consumes a
    shared bit, as the kernel's sequential sync does."""
    for u in prange(units.shape[0]):
        merge_unit(vmt, units, u, out_pages, out_cnt, restore)


_WB = 256  # write-back queue length (entries)


@jit(inline="always")
def _drain(arr, lo, qa, qv, nq, out_pages, pg0, npages, last_page):
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
def merge_unit(vmt, units, u, out_pages, out_cnt, restore):
    if restore:
        _merge_unit(vmt, units, u, out_pages, out_cnt, True)
    else:
        _merge_unit(vmt, units, u, out_pages, out_cnt, False)


@jit(inline="always")
def _merge_unit(vmt, units, u, out_pages, out_cnt, restore):
    # Branch-free merge: with about half the bits changing, "does this bit change?" and
    # "does this byte change?" are coin flips; as branches they are mispredicted half the time.
    # The bit update is arithmetic, and changed bytes are appended to a queue (index advanced by
    # 0 or 1) that is written back in a loop without data-dependent branches. ``restore`` is a
    # constant at each call site. For restore, "a bit was consumed" and "the byte changed" are the
    # same condition (consumed bits only go 1 -> 0), so ``wrote`` serves both.
    j = units[u, 0]
    intid, latch, hw, vpt, vb, use_vpt, nv, base, runs, permx, nslots, sstart, send, sptr = _views(vmt[j])
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
                nq += wrote
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
                wrote = 0
            bit = iid & 7
            if restore:
                diff = (val >> bit) & 1
                latch[i] = diff
            else:
                h = use_vpt & np.int64(hw[i] != 0)  # any nonzero flag byte is True
                vbit = (np.int64(vpt[(vrow + (iid >> 3)) * h]) >> bit) & 1
                lt = np.int64(latch[i] != 0)
                want = lt ^ ((lt ^ vbit) & h)
                diff = ((val >> bit) & 1) ^ want
                vpt_reads += h
            val ^= diff << bit
            writes += diff
            wrote |= diff
    qa[nq] = cur
    qv[nq] = val
    nq += wrote
    changed += val != old
    npages, last_page = _drain(arr, lo, qa, qv, nq, out_pages, pg0, npages, last_page)
    out_cnt[u, 0] = writes
    out_cnt[u, 1] = vpt_reads
    out_cnt[u, 2] = changed
    out_cnt[u, 3] = npages


# ------------------------------------------------------------------ fault scans
@jit
def first_fault(vmrow, run_lo, run_hi, mode, walk_key_is_intid, sro):
    """Earliest faulting access of one VM's plan, in walk order, without changing anything.

    mode 0 (save): a read faults for every entry at an unmapped address; a write faults for an
    entry in a read-only slot whose wanted bit differs from the stored one (nothing in a
    read-only slot ever changes before the first fault). mode 1 (restore, row order): a read
    faults as for save; a write faults for an entry in a read-only slot whose stored bit is 1.

    Returns (row index, is_write, gpa) of the earliest fault, or (-1, 0, 0)."""
    intid, latch, hw, vpt, vb, use_vpt, nv, base, runs, permx, nslots, sstart, send, sptr = _views(vmrow)

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
                want = np.uint8(latch[i] != 0)
                if use_vpt and hw[i] != 0:
                    want = (vpt[v * vb + (iid >> 3)] >> bit) & 1
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
def scan_table(intid, target, latch, b, vcpu, sstart, send, sptr, limit_intid, apply):
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
def count_distinct_bytes(intid, limit_intid):
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
# Measured on host-4096 (one thread, 16 VMs, one LPI per byte), in ns/LPI: 3.7-4.4 for this
# access pattern, against 7.6 for the same work in row order (consecutive rows hit tables exactly
# 64 KiB apart, so every load follows a store with the same low 12 address bits: 4K aliasing) and
# ~9 for the branchy byte-merging kernel above. Ablations of this kernel (5.6 -> 4.4 overall):
# per-LPI dirty-page test 0.7 (now once per run: runs never cross a page), byte-group tracking
# 0.45 (skipped when no two LPIs share a byte), VPT load waiting for hw[i] (now loaded at a clamped
# index and selected). The store is branch-free: an unchanged byte is "stored" into a per-unit
# scratch byte instead (address select), so untouched guest pages stay uncommitted and clean
# cache lines stay clean; an unconditional store would save a further ~0.5.
@pjit
def run_units(vmt, units, out_pages, out_cnt, scratch, restore):
    """Save (or restore) by runs. Every run lies in one memslot and no access faults (checked by
    the caller). ``out_cnt[u] = (writes, vpt_reads, bytes_changed, n_pages)``."""
    for u in prange(units.shape[0]):  # prange's index is unsigned: pass an int64 so run_unit is
        run_unit(vmt, units, np.int64(u), out_pages, out_cnt, scratch, restore)  # compiled once


@jit
def run_unit(vmt, units, u, out_pages, out_cnt, scratch, restore):
    j = units[u, 0]
    if restore:  # restore reports no bytes_changed
        _run_unit(vmt, units, u, out_pages, out_cnt, scratch, True, False)
    elif vmt[j, ONE_PER_BYTE]:
        _run_unit(vmt, units, u, out_pages, out_cnt, scratch, False, False)
    else:
        _run_unit(vmt, units, u, out_pages, out_cnt, scratch, False, True)


@jit(inline="always")
def _run_unit(vmt, units, u, out_pages, out_cnt, scratch, restore, track_bytes):
    # ``restore`` and ``track_bytes`` are constants at each call site, so each variant compiles
    # without the branches it does not need. Without shared bytes (``track_bytes`` False), bytes
    # changed = writes: measured 0.45 ns/LPI saved on host-4096 (one thread, 5.6 -> 5.2).
    j = units[u, 0]
    intid, latch, hw, vpt, vb, use_vpt, nv, base, runs, permx, nslots, sstart, send, sptr = _views(vmt[j])
    vlim = vpt.shape[0] - 1
    pg0 = units[u, 3]
    sp = scratch.ctypes.data + np.uint64(u * 64)
    vbase = vmt[j, P_VPT]
    lbase = vmt[j, P_LATCH]
    hwbase = vmt[j, P_HW]
    writes = 0
    vpt_reads = 0
    changed = 0
    npages = 0
    last_page = NO_ADDR
    prev = NO_ADDR  # guest address of the current byte group (track_bytes)
    grp_old = np.int64(0)  # its value before this call
    last = np.int64(0)  # its value now
    for r in range(units[u, 1], units[u, 2]):
        v = runs[RUNW * r]
        first = runs[RUNW * r + 1]
        stride = runs[RUNW * r + 2]
        length = runs[RUNW * r + 3]
        b = base[v]
        i0 = first if stride != 0 else permx[first]
        a0 = b + np.uint64(intid[i0] >> 3)
        s = _find_slot(sstart, send, nslots, a0)
        hbase = sptr[s] + (b - sstart[s])  # host address of this vCPU's table byte 0
        vrow = v * vb
        wrote = np.int64(0)
        istr = runs[RUNW * r + 4]
        iid0 = np.int64(intid[i0])
        vlast = vrow + ((iid0 + (length - 1) * istr) >> 3)
        if (
            not track_bytes
            and istr > 0
            and (istr & 7) == 0
            and (restore or use_vpt == 0 or (vrow + (iid0 >> 3) >= 0 and vlast <= vlim))
        ):
            # Arithmetic run with a whole-byte INTID stride (host-4096's layout): the bit is the
            # same for every LPI, and the guest byte, VPT byte and LPI rows advance by fixed
            # steps, so every address is a running pointer (measured: 1.82 -> 1.45 ns/LPI for the
            # save kernel, two threads). The VPT pointer only moves when the VPT is read.
            bit = iid0 & 7
            bstep = np.uint64(istr >> 3)
            ha = hbase + np.uint64(iid0 >> 3)
            va = vbase + np.uint64(min(vrow + (iid0 >> 3), vlim))
            vstep = bstep * np.uint64(use_vpt)
            lp = lbase + np.uint64(first)
            hp = hwbase + np.uint64(first)
            rstep = np.uint64(stride)
            for _k in range(length):
                old = np.int64(view_u8(ha, 1)[0])
                if restore:
                    diff = (old >> bit) & 1
                    view_u8(lp, 1)[0] = diff
                else:
                    h = use_vpt & np.int64(view_u8(hp, 1)[0] != 0)  # any nonzero flag byte is True
                    vbit = (np.int64(view_u8(va, 1)[0]) >> bit) & 1
                    lt = np.int64(view_u8(lp, 1)[0] != 0)
                    want = lt ^ ((lt ^ vbit) & h)
                    diff = ((old >> bit) & 1) ^ want
                    vpt_reads += h
                last = old ^ (diff << bit)
                view_u8(sp + (ha - sp) * np.uint64(diff), 1)[0] = last
                writes += diff
                wrote |= diff
                ha += bstep
                va += vstep
                lp += rstep
                hp += rstep
        else:
            for k in range(length):
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
                    latch[i] = diff
                else:
                    # the VPT byte is loaded at an index that does not wait for hw[i] (clamped into
                    # the array; validation guarantees hw LPIs are in range), then selected
                    h = use_vpt & np.int64(hw[i] != 0)
                    vbit = (np.int64(vpt[min(vrow + byte, vlim)]) >> bit) & 1
                    lt = np.int64(latch[i] != 0)
                    want = lt ^ ((lt ^ vbit) & h)
                    diff = ((old >> bit) & 1) ^ want
                    vpt_reads += h
                last = old ^ (diff << bit)
                view_u8(sp + (ha - sp) * np.uint64(diff), 1)[0] = last
                writes += diff
                wrote |= diff
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


# ------------------------------------------------------------------ serial drivers
# For small batches: waking the thread pool costs more than the work (see _config: measured
# 0.38 ms serial vs 7.4-15 ms parallel for 4 VMs x 8192 LPIs on a busy 2-core machine).
@jit
def run_units_serial(vmt, units, out_pages, out_cnt, scratch, restore):
    for u in range(units.shape[0]):
        run_unit(vmt, units, u, out_pages, out_cnt, scratch, restore)


@jit
def merge_units_serial(vmt, units, out_pages, out_cnt, scratch, restore):
    for u in range(units.shape[0]):
        merge_unit(vmt, units, u, out_pages, out_cnt, restore)


@jit
def collect(units, out_cnt, out_pages, n_jobs):
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
