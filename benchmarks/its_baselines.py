"""Baseline for the ITS table ABI: a compiled literal port of the kernel's walk.

``kernel_port_save`` / ``kernel_port_restore`` do what ``vgic_its_save_tables_v0`` /
``vgic_its_restore_tables_v0`` do, the way the kernel does it, compiled with numba:

* every guest access is its own ``kvm_read_guest`` / ``kvm_write_guest`` of 8 bytes: a memslot
  search (binary search over the sorted slots, as ``search_memslots``), then the copy; a write
  marks its page dirty;
* ``vgic_its_check_id`` / ``vgic_its_check_event_id`` test visibility with another memslot search;
* collections are a list searched linearly (``find_collection``), restored objects are appended
  to lists (here: preallocated flat arrays, so the port pays no allocation at all, which favours
  it), devices and ITEs are sorted with a merge sort before the save (``list_sort``);
* ``scan_its_table`` is the kernel's loop, with its ``int`` size.

Scope is the one of :func:`vlpi.its.abi.save_tables_v0` / ``restore_tables_v0``: the tables and
the ITS structures, not the LPIs (``vgic_add_lpi``). Results are counts and the kernel's error
code, so ``tests/test_its_baselines.py`` can compare them with the scalar walker
(``tests/its_table_walker.py``) and with vlpi.
"""

from __future__ import annotations

import numba
import numpy as np

from vlpi import GuestMemory

EINVAL, EFAULT, EACCES, EEXIST = 22, 14, 13, 17
ADDR_51_16 = np.uint64(((1 << 52) - 1) & ~((1 << 16) - 1))
NOT_MAPPED = 0xFFFF_FFFF


def _jit(f):
    return numba.njit(nogil=True, cache=True, error_model="numpy")(f)


# --------------------------------------------------------------------- kvm_read/write_guest
@_jit
def _search_memslots(starts, ends, gpa):
    lo, hi = 0, starts.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if starts[mid] <= gpa:
            lo = mid + 1
        else:
            hi = mid
    s = lo - 1
    if s >= 0 and gpa < ends[s]:
        return s
    return -1


@_jit
def _read_guest(mem, starts, ends, offs, gpa, out):
    """kvm_read_guest of 8 bytes: one memslot search, then the copy (a read that runs into the
    next slot continues there, as kvm_read_guest's per-page loop does). False on -EFAULT."""
    s = _search_memslots(starts, ends, np.uint64(gpa))
    if s < 0:
        return False
    w = np.uint64(0)
    for k in range(8):
        a = np.uint64(gpa + k)
        if a >= ends[s]:
            s = _search_memslots(starts, ends, a)
            if s < 0:
                return False
        w |= np.uint64(mem[offs[s] + np.int64(a - starts[s])]) << np.uint64(8 * k)
    out[0] = w
    return True


@_jit
def _write_guest(mem, starts, ends, offs, ro, dirty, page_offs, gpa, w):
    """kvm_write_guest of 8 bytes (mark_page_dirty for each page written): False on -EFAULT."""
    s = _search_memslots(starts, ends, np.uint64(gpa))
    if s < 0 or ro[s]:
        return False
    if np.uint64(gpa + 8) > ends[s]:  # runs into the next slot: check every byte first
        for k in range(8):
            t = _search_memslots(starts, ends, np.uint64(gpa + k))
            if t < 0 or ro[t]:
                return False
    for k in range(8):
        a = np.uint64(gpa + k)
        if a >= ends[s]:
            s = _search_memslots(starts, ends, a)
        mem[offs[s] + np.int64(a - starts[s])] = np.uint8((w >> np.uint64(8 * k)) & np.uint64(0xFF))
        dirty[page_offs[s] + np.int64(a >> np.uint64(12)) - np.int64(starts[s] >> np.uint64(12))] = 1
    return True


@_jit
def _visible(starts, ends, gpa):
    return _search_memslots(starts, ends, np.uint64(gpa)) >= 0


@_jit
def _check_id(mem, starts, ends, offs, base, entries, indirect, is_device, ident, tmp, eaddr):
    if is_device:
        if ident >= 1 << 16:
            return False
    elif ident >= 1 << 16:
        return False
    if not indirect:
        if ident >= entries:
            return False
        eaddr[0] = base + ident * 8
        return _visible(starts, ends, eaddr[0])
    index = ident // 8192
    if index >= entries:
        return False
    if not _read_guest(mem, starts, ends, offs, base + index * 8, tmp):
        return False
    if tmp[0] >> np.uint64(63) == 0:
        return False
    eaddr[0] = np.int64(tmp[0] & ADDR_51_16) + (ident % 8192) * 8
    return _visible(starts, ends, eaddr[0])


# ------------------------------------------------------------------------------ restore
@_jit
def _restore(mem, starts, ends, offs, dt_valid, dt_base, dt_entries, indirect, ct_valid, ct_base, ct_entries,
             n_vcpus, c_id, c_target, d_id, i_eid, i_intid, i_coll, counts):
    """counts = [collections, devices, ITEs]; returns 0 or a negative errno."""
    tmp = np.zeros(1, np.uint64)
    eaddr = np.zeros(1, np.int64)
    nc = 0
    # vgic_its_restore_collection_table
    if ct_valid:
        read = 0
        gpa = ct_base
        while read < ct_entries * 8:
            if not _read_guest(mem, starts, ends, offs, gpa, tmp):
                return -EFAULT
            val = tmp[0]
            if val >> np.uint64(63) == 0:
                break
            target = np.int64((val >> np.uint64(16)) & np.uint64(0xFFFF_FFFF))
            coll_id = np.int64(val & np.uint64(0xFFFF))
            if target != NOT_MAPPED and target >= n_vcpus:
                return -EINVAL
            for k in range(nc):  # find_collection
                if c_id[k] == coll_id:
                    return -EEXIST
            if not _check_id(mem, starts, ends, offs, ct_base, ct_entries, False, False, coll_id, tmp, eaddr):
                return -EINVAL
            c_id[nc] = coll_id
            c_target[nc] = target
            nc += 1
            counts[0] = nc
            gpa += 8
            read += 8
    if not dt_valid:
        return 0
    # vgic_its_restore_device_tables
    n_l1 = dt_entries if indirect else 1
    for l1 in range(n_l1):
        if indirect:
            if not _read_guest(mem, starts, ends, offs, dt_base + 8 * l1, tmp):
                return -EFAULT
            if tmp[0] >> np.uint64(63) == 0:
                continue
            base = np.int64(tmp[0] & ADDR_51_16)
            length = np.int64(1 << 16)
            ident = (l1 * 8192) & 0xFFFF_FFFF
        else:
            base, length, ident = dt_base, dt_entries * 8, 0
        gpa = base
        while True:  # scan_its_table(..., vgic_its_restore_dte)
            if not _read_guest(mem, starts, ends, offs, gpa, tmp):
                return -EFAULT
            entry = tmp[0]
            if entry >> np.uint64(63) == 0:
                nxt = 1
            else:
                nxt = np.int64((entry >> np.uint64(49)) & np.uint64(0x3FFF))
                if not _check_id(mem, starts, ends, offs, dt_base, dt_entries, indirect, True, ident, tmp, eaddr):
                    return -EINVAL
                itt = np.int64((entry >> np.uint64(5)) & np.uint64((1 << 44) - 1)) << 8
                bits = np.int64(entry & np.uint64(0x1F)) + 1
                d_id[counts[1]] = ident
                counts[1] += 1
                # vgic_its_restore_itt: scan_its_table(itt, (int)(2^bits * 8), ...)
                size = ((np.int64(1) << bits) * 8) & 0xFFFF_FFFF
                ilen = np.uint64(size - (1 << 32)) if size >= 1 << 31 else np.uint64(size)
                igpa = itt
                eid = 0
                while True:
                    if not _read_guest(mem, starts, ends, offs, igpa, tmp):
                        return -EFAULT
                    val = tmp[0]
                    coll_id = np.int64(val & np.uint64(0xFFFF))
                    lpi = np.int64((val >> np.uint64(16)) & np.uint64(0xFFFF_FFFF))
                    e32 = eid & 0xFFFF_FFFF
                    if lpi == 0:
                        off = 1
                    else:
                        if lpi < 8192:
                            return -EINVAL
                        off = np.int64(val >> np.uint64(48))
                        if ((e32 + off) & 0xFFFF_FFFF) >= (np.int64(1) << bits):
                            return -EINVAL
                        found = -1
                        for k in range(nc):  # find_collection
                            if c_id[k] == coll_id:
                                found = k
                                break
                        if found < 0:
                            return -EINVAL
                        if e32 >= (np.int64(1) << bits) or not _visible(starts, ends, itt + ((e32 * 8) & 0xFFFF_FFFF)):
                            return -EINVAL
                        j = counts[2]
                        i_eid[j] = e32
                        i_intid[j] = lpi
                        i_coll[j] = found
                        counts[2] = j + 1
                        if off == 0:
                            break
                    bo = np.uint64(off * 8)
                    if bo >= ilen:
                        break
                    eid += off
                    igpa += off * 8
                    ilen -= bo
            if nxt == 0:
                return 0
            if nxt * 8 >= length:
                break
            ident = (ident + nxt) & 0xFFFF_FFFF
            gpa += nxt * 8
            length -= nxt * 8
    return 0


# --------------------------------------------------------------------------------- save
@_jit
def _save(mem, starts, ends, offs, ro, dirty, page_offs, dt_valid, dt_base, dt_entries, indirect,
          d_id, d_itt, d_bits, d_first, i_eid, i_intid, i_icid, i_hw, v41, ct_valid, ct_base, ct_entries,
          c_val, counts):
    """counts = [dtes, ites, ctes, terminator]; returns 0 or a negative errno."""
    tmp = np.zeros(1, np.uint64)
    eaddr = np.zeros(1, np.int64)
    if dt_valid:
        order = np.argsort(d_id, kind="mergesort")  # list_sort(device_list)
        nd = order.shape[0]
        for r in range(nd):
            k = order[r]
            dev = np.int64(d_id[k])
            if not _check_id(mem, starts, ends, offs, dt_base, dt_entries, indirect, True, dev, tmp, eaddr):
                return -EINVAL
            j0, j1 = d_first[k], d_first[k + 1]
            iorder = np.argsort(i_eid[j0:j1], kind="mergesort")  # list_sort(itt_head)
            m = j1 - j0
            for q in range(m):
                j = j0 + iorder[q]
                eid = np.int64(i_eid[j])
                gpa = d_itt[k] + ((eid * 8) & 0xFFFF_FFFF)
                if i_hw[j] and not v41:
                    return -EACCES
                nxt = 0 if q == m - 1 else min(np.int64(i_eid[j0 + iorder[q + 1]]) - eid, 0xFFFF)
                val = (np.uint64(nxt) << np.uint64(48)) | (np.uint64(i_intid[j]) << np.uint64(16)) \
                    | np.uint64(i_icid[j])
                if not _write_guest(mem, starts, ends, offs, ro, dirty, page_offs, gpa, val):
                    return -EFAULT
                counts[1] += 1
            nxt = 0 if r == nd - 1 else min(np.int64(d_id[order[r + 1]]) - dev, 0x3FFF)
            val = (np.uint64(1) << np.uint64(63)) | (np.uint64(nxt) << np.uint64(49)) \
                | (np.uint64(d_itt[k] >> 8) << np.uint64(5)) | np.uint64(d_bits[k] - 1)
            if not _write_guest(mem, starts, ends, offs, ro, dirty, page_offs, eaddr[0], val):
                return -EFAULT
            counts[0] += 1
    if ct_valid:
        gpa = ct_base
        filled = 0
        for k in range(c_val.shape[0]):
            if not _write_guest(mem, starts, ends, offs, ro, dirty, page_offs, gpa, c_val[k]):
                return -EFAULT
            counts[2] += 1
            gpa += 8
            filled += 8
        if filled != ct_entries * 8:
            if not _write_guest(mem, starts, ends, offs, ro, dirty, page_offs, gpa, np.uint64(0)):
                return -EFAULT
            counts[3] = 1
    return 0


# ------------------------------------------------------------------------------- wrappers
class _Guest:
    """The guest's memory as one flat byte array per call is what the port reads: the slots'
    own arrays, concatenated *by reference* is impossible in numba, so the port gets a flat
    copy for reads (restore) and writes go back slot by slot (save). Building it is outside
    the timed call: ``prepare_*`` returns a closure that only runs the walk."""

    def __init__(self, mem: GuestMemory) -> None:
        sl = mem.slots
        self.slots = sl
        self.starts = np.array([s.gpa for s in sl], np.uint64)
        self.ends = np.array([s.end for s in sl], np.uint64)
        sizes = np.array([s.size for s in sl], np.int64)
        self.offs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.flat = np.concatenate([s.data for s in sl]) if sl else np.zeros(0, np.uint8)
        self.ro = np.array([s.readonly for s in sl], np.uint8)
        npages = np.array([s.dirty.size for s in sl], np.int64)
        self.page_offs = np.concatenate([[0], np.cumsum(npages)[:-1]]).astype(np.int64)
        self.dirty = np.zeros(int(npages.sum()), np.uint8)

    def write_back(self) -> None:
        for s, o, po in zip(self.slots, self.offs.tolist(), self.page_offs.tolist(), strict=True):
            if not s.readonly:
                s.data[:] = self.flat[o : o + s.size]
            np.logical_or(s.dirty, self.dirty[po : po + s.dirty.size], out=s.dirty)  # the slot's own bitmap


def _baser(baser: int):
    base = (baser & 0x0000_FFFF_FFFF_0000) | (((baser >> 12) & 0xF) << 48)
    return bool(baser >> 63), np.int64(base), np.int64(((baser & 0xFF) + 1) * 8192), bool((baser >> 62) & 1)


def prepare_restore(mem: GuestMemory, baser0: int, baser1: int, n_vcpus: int, max_ites: int):
    """A closure running the port's restore on a copy of ``mem``: returns (err, ncoll, ndev, nites)."""
    g = _Guest(mem)
    dt = _baser(baser0)
    ct = _baser(baser1)
    c_id = np.zeros(1 << 16, np.int64)
    c_target = np.zeros(1 << 16, np.int64)
    n_dev_max = 1 << 20
    d_id = np.zeros(n_dev_max, np.int64)
    i_eid = np.zeros(max_ites, np.int64)
    i_intid = np.zeros(max_ites, np.int64)
    i_coll = np.zeros(max_ites, np.int64)

    def run():
        counts = np.zeros(3, np.int64)
        err = _restore(g.flat, g.starts, g.ends, g.offs, dt[0], dt[1], dt[2], dt[3], ct[0], ct[1], ct[2],
                       np.int64(n_vcpus), c_id, c_target, d_id, i_eid, i_intid, i_coll, counts)
        return int(err), int(counts[0]), int(counts[1]), int(counts[2])

    return run


def prepare_save(mem: GuestMemory, baser0: int, baser1: int, devices, collections, has_gicv4_1: bool):
    """A closure running the port's save into a copy of ``mem``: returns (err, dtes, ites, ctes,
    terminator); ``closure.write_back()`` copies the result into ``mem``."""
    g = _Guest(mem)
    dt = _baser(baser0)
    ct = _baser(baser1)
    d_id = np.array([d.device_id for d in devices], np.int64)
    d_itt = np.array([d.itt_addr for d in devices], np.int64)
    d_bits = np.array([d.eventid_bits for d in devices], np.int64)
    d_first = np.concatenate([[0], np.cumsum([len(d.event_id) for d in devices])]).astype(np.int64)

    def cat(name, dtype):
        parts = [np.asarray(getattr(d, name)).astype(dtype) for d in devices]
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    i_eid, i_intid, i_icid, i_hw = cat("event_id", np.int64), cat("pintid", np.int64), cat("icid", np.int64), \
        cat("hw", np.bool_)
    c_val = np.array([(1 << 63) | (rd << 16) | icid for icid, rd in collections], np.uint64)

    def run():
        counts = np.zeros(4, np.int64)
        err = _save(g.flat, g.starts, g.ends, g.offs, g.ro, g.dirty, g.page_offs, dt[0], dt[1], dt[2], dt[3],
                    d_id, d_itt, d_bits, d_first, i_eid, i_intid, i_icid, i_hw, bool(has_gicv4_1),
                    ct[0], ct[1], ct[2], c_val, counts)
        return (int(err), *(int(c) for c in counts))

    run.write_back = g.write_back
    return run
