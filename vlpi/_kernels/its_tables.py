"""Compiled walks of the ITS table ABI revision 0 (``vlpi.its.abi`` validates and calls these).

Both kernels follow the kernel's order of accesses entry by entry, so their results (and where
they stop) are those of ``vgic_its_save_tables_v0`` / ``vgic_its_restore_tables_v0``; what makes
them fast is what they do not do per entry: no memslot search while an access stays in the slot
of the previous one, collections found through a 64 Ki-entry index instead of a list, outputs in
flat typed arrays that grow by doubling.

Guest memory comes in as the slot table (sorted starts, ends, data addresses, read-only flags,
dirty-bitmap addresses); an 8-byte entry is readable (writable) when every byte lies in a slot
(a writable one), adjacent slots included. "Visible" is a first-byte test (``kvm_is_visible_gfn``
at byte granularity).

Error information comes back as an ``int64[8]`` ``info`` array: ``[errno, reason, gpa, a, b, c,
d, 0]``; the reasons are the ``R_*`` constants below and the caller turns them into messages.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from vlpi._kernels._jit import jit, view_u8, view_u32, view_u64, voidptr
from vlpi._kernels.pending import _find_slot
from vlpi._typing import BoolLike, I64Array, IntLike, U8Array, U16Array, U32Array, U64Array

EINVAL = 22
EEXIST = 17
EFAULT = 14
EACCES = 13
ENOMEM = 12

# restore reasons
R_CTE_RDBASE, R_CTE_EXISTS, R_CTE_ICID, R_CTE_FAULT = 1, 2, 3, 4
R_DTE_ID, R_DTE_FAULT, R_L1_FAULT = 5, 6, 7
R_ITE_PINTID, R_ITE_NEXT, R_ITE_COLL, R_ITE_EVENT, R_ITE_GPA, R_ITE_FAULT = 8, 9, 10, 11, 12, 13
R_TOO_MANY = 14
# save reasons
S_DEV_ID, S_ITE_HW, S_ITE_FAULT, S_DTE_FAULT, S_CTE_FAULT, S_TERM_FAULT = 21, 22, 23, 24, 25, 26

ADDR_51_16 = np.uint64(((1 << 52) - 1) & ~((1 << 16) - 1))
L2_ENTRIES = 8192
U32 = np.int64(0xFFFF_FFFF)


@numba.njit(inline="always", nogil=True, cache=True)
def _view_u16(addr: IntLike, n: IntLike) -> U16Array:
    # ignore: numba's stubs type an intrinsic as called from Python, and carray's dtype as numpy's
    return numba.carray(voidptr(addr), (n,), numba.uint16)  # type: ignore[attr-defined,call-arg,call-overload,no-any-return]


# ------------------------------------------------------------------------- guest memory
@jit(inline="always")
def _slot_of(sstart: U64Array, send: U64Array, addr: IntLike) -> int:
    return _find_slot(sstart, send, sstart.shape[0], addr)


@jit(inline="always")
def _visible(sstart: U64Array, send: U64Array, addr: IntLike) -> bool:
    return _slot_of(sstart, send, np.uint64(addr)) >= 0


@jit
def _read_slow(sstart: U64Array, send: U64Array, sptr: U64Array, addr: IntLike, out: U64Array) -> bool:
    """Byte by byte across adjacent slots: (ok, word) in out[0:2]."""
    w = np.uint64(0)
    for k in range(8):
        a = np.uint64(addr + k)
        s = _slot_of(sstart, send, a)
        if s < 0:
            return False
        b = view_u8(sptr[s], send[s] - sstart[s])[a - sstart[s]]
        w |= np.uint64(b) << np.uint64(8 * k)
    out[0] = w
    return True


@jit(inline="always")
def _read64(sstart: U64Array, send: U64Array, sptr: U64Array, addr: IntLike, out: U64Array) -> bool:
    """One little-endian 8-byte entry; False (nothing read) if any byte is unmapped."""
    a = np.uint64(addr)
    s = _slot_of(sstart, send, a)
    if s >= 0 and a + np.uint64(8) <= send[s]:
        p = sptr[s] + (a - sstart[s])
        if p & np.uint64(7) == 0:
            out[0] = view_u64(p, 1)[0]
        else:
            bs = view_u8(p, 8)
            w = np.uint64(0)
            for k in range(8):
                w |= np.uint64(bs[k]) << np.uint64(8 * k)
            out[0] = w
        return True
    if s < 0:
        return False
    return _read_slow(sstart, send, sptr, a, out)


# ---------------------------------------------------------------------------- restore
@jit(inline="always")
def _grow_to(a: npt.NDArray[Any], n: IntLike, cap: IntLike) -> npt.NDArray[Any]:  # a's dtype
    b = np.empty(cap, a.dtype)
    b[:n] = a[:n]
    return b


@jit(inline="always")
def _grow(a: npt.NDArray[Any], n: IntLike) -> npt.NDArray[Any]:  # a's dtype
    b = np.empty(max(2 * a.shape[0], 16), a.dtype)
    b[:n] = a[:n]
    return b


@jit
def _check_dev_id(sstart: U64Array, send: U64Array, sptr: U64Array, dt_base: IntLike, dt_entries: IntLike,
                  indirect: BoolLike, dev_id: IntLike, tmp: U64Array) -> bool:
    """vgic_its_check_id for a DeviceID (u32): True when the DTE address is valid."""
    if dev_id > 0xFFFF:
        return False
    if not indirect:
        if dev_id >= dt_entries:
            return False
        return _visible(sstart, send, dt_base + 8 * dev_id)
    index = dev_id // L2_ENTRIES
    if index >= dt_entries:
        return False
    if not _read64(sstart, send, sptr, dt_base + 8 * index, tmp):
        return False
    l1 = tmp[0]
    if l1 >> np.uint64(63) == 0:
        return False
    return _visible(sstart, send, np.int64(l1 & ADDR_51_16) + 8 * (dev_id % L2_ENTRIES))


ST_DONE, ST_FULL, ST_ERROR = 0, 1, 2

# restore_walk's result: collections (ICID, RDBase, count), devices (DeviceID, ITT, bits, first ITE, count),
# ITEs (EventID, pINTID, ICID, count)
_Restored = tuple[U16Array, U32Array, int, U32Array, I64Array, U8Array, I64Array, int, U32Array, U32Array,
                  U16Array, IntLike]


@jit
def _scan_itt(sstart: U64Array, send: U64Array, sptr: U64Array, itt: IntLike, limit: IntLike, coll_exists: U8Array,
              i_eid: U32Array, i_pint: U32Array, i_icid: U16Array, ni: IntLike, st: I64Array, info: I64Array,
              dev_id: IntLike) -> tuple[IntLike, int]:
    """scan_its_table over one ITT from the state ``st`` = [EventID, GPA, remaining byte length
    (an unsigned long, kept as its bit pattern)], appending valid ITEs from ``ni`` on. Returns
    (ni, status): ST_FULL when the output arrays are full (``st`` then points at the entry to
    redo), ST_ERROR with ``info`` filled. Kept apart from the caller, which grows the arrays:
    reassigning an array inside a hot loop costs numba ~70 ns per iteration (measured)."""
    tmp = np.zeros(1, np.uint64)
    cap = i_eid.shape[0]
    eid = st[0]
    igpa = st[1]
    ilen = np.uint64(st[2])
    s_lo = np.uint64(1)  # the slot of the run being read (empty range: no slot yet)
    s_hi = np.uint64(0)
    s_p = np.uint64(0)
    while True:
        a = np.uint64(igpa)
        if a >= s_lo and a + np.uint64(8) <= s_hi and (s_p + (a - s_lo)) & np.uint64(7) == 0:
            iw = view_u64(s_p + (a - s_lo), 1)[0]
        else:
            s = _slot_of(sstart, send, a)
            if s >= 0 and a + np.uint64(8) <= send[s]:
                s_lo, s_hi, s_p = sstart[s], send[s], sptr[s]
            if not _read64(sstart, send, sptr, igpa, tmp):
                info[0], info[1], info[2], info[3], info[4] = EFAULT, R_ITE_FAULT, igpa, dev_id, eid & U32
                return ni, ST_ERROR
            iw = tmp[0]
        pint = np.int64((iw >> np.uint64(16)) & np.uint64(0xFFFF_FFFF))
        e32 = eid & U32
        if pint == 0:
            istep = np.int64(1)
        else:
            istep = np.int64(iw >> np.uint64(48))
            icid = np.int64(iw & np.uint64(0xFFFF))
            reason = 0
            if pint < 8192:
                reason = R_ITE_PINTID
            elif ((e32 + istep) & U32) >= limit:
                reason = R_ITE_NEXT
            elif not coll_exists[icid]:
                reason = R_ITE_COLL
            elif e32 >= limit:
                reason = R_ITE_EVENT
            else:
                g = np.uint64(itt + ((e32 * 8) & U32))  # vgic_its_check_event_id: u32 product
                if not (g >= s_lo and g < s_hi) and _slot_of(sstart, send, g) < 0:
                    reason = R_ITE_GPA
            if reason:
                info[0], info[1], info[2], info[3], info[4] = EINVAL, reason, igpa, dev_id, e32
                info[5], info[6] = pint, np.int64(iw)
                return ni, ST_ERROR
            if ni == cap:
                st[0], st[1], st[2] = eid, igpa, np.int64(ilen)
                return ni, ST_FULL
            i_eid[ni] = e32
            i_pint[ni] = pint
            i_icid[ni] = icid
            ni += 1
            if istep == 0:
                return ni, ST_DONE
        bo = np.uint64(istep * 8)
        if bo >= ilen:
            return ni, ST_DONE
        eid += istep
        igpa += istep * 8
        ilen -= bo


@jit
def restore_walk(sstart: U64Array, send: U64Array, sptr: U64Array, dt_valid: BoolLike, dt_base: IntLike,
                 dt_entries: IntLike, indirect: BoolLike, ct_valid: BoolLike, ct_base: IntLike, ct_entries: IntLike,
                 n_vcpus: IntLike, coll_exists: U8Array, max_ites: IntLike, info: I64Array) -> _Restored:
    """vgic_its_restore_tables_v0 up to the first error (LPIs are not created here).

    ``coll_exists`` (uint8[65536]) marks ICIDs the ITS already has; restored ones are added.
    Returns (c_icid, c_rd, nc, d_id, d_itt, d_bits, d_first, nd, i_eid, i_pintid, i_icid, ni):
    collections, devices (``d_first[k]`` = first ITE of device k) and ITEs in restore order;
    ``info[0]`` is 0 or the errno of the first failure (the failing device is included).
    """
    tmp = np.zeros(1, np.uint64)
    c_icid = np.empty(16, np.uint16)
    c_rd = np.empty(16, np.uint32)
    nc = 0
    d_id = np.empty(16, np.uint32)
    d_itt = np.empty(16, np.int64)
    d_bits = np.empty(16, np.uint8)
    d_first = np.empty(17, np.int64)
    nd = 0
    i_eid = np.empty(min(1024, max_ites), np.uint32)
    i_pint = np.empty(min(1024, max_ites), np.uint32)
    i_icid = np.empty(min(1024, max_ites), np.uint16)
    ni: IntLike = np.int64(0)  # not a literal: one compiled _scan_itt, not two (Literal[int](0) and int64)
    d_first[0] = 0

    # ---- collections: until an invalid CTE or the end of the table
    if ct_valid:
        for k in range(ct_entries):
            gpa = ct_base + 8 * k
            if not _read64(sstart, send, sptr, gpa, tmp):
                info[0], info[1], info[2], info[3] = EFAULT, R_CTE_FAULT, gpa, k
                return c_icid, c_rd, nc, d_id, d_itt, d_bits, d_first, nd, i_eid, i_pint, i_icid, ni
            w = tmp[0]
            if w >> np.uint64(63) == 0:
                break
            rd = np.int64((w >> np.uint64(16)) & np.uint64(0xFFFF_FFFF))
            icid = np.int64(w & np.uint64(0xFFFF))
            err = 0
            reason = 0
            if rd != U32 and rd >= n_vcpus:
                err, reason = EINVAL, R_CTE_RDBASE
            elif coll_exists[icid]:
                err, reason = EEXIST, R_CTE_EXISTS
            elif icid >= ct_entries or not _visible(sstart, send, ct_base + 8 * icid):
                err, reason = EINVAL, R_CTE_ICID
            if err:
                info[0], info[1], info[2], info[3], info[4], info[5] = err, reason, gpa, k, icid, rd
                return c_icid, c_rd, nc, d_id, d_itt, d_bits, d_first, nd, i_eid, i_pint, i_icid, ni
            coll_exists[icid] = 1
            if nc == c_icid.shape[0]:
                c_icid = _grow(c_icid, nc)
                c_rd = _grow(c_rd, nc)
            c_icid[nc] = icid
            c_rd[nc] = rd
            nc += 1

    if not dt_valid:
        return c_icid, c_rd, nc, d_id, d_itt, d_bits, d_first, nd, i_eid, i_pint, i_icid, ni

    # ---- devices: scan_its_table over the flat table, or over every L1 entry (step 1) and
    # the 64 KiB L2 page of each valid one
    n_outer = dt_entries if indirect else 1
    done = False
    for cur1 in range(n_outer):
        if indirect:
            gpa1 = dt_base + 8 * cur1
            if not _read64(sstart, send, sptr, gpa1, tmp):
                info[0], info[1], info[2], info[3] = EFAULT, R_L1_FAULT, gpa1, cur1
                return c_icid, c_rd, nc, d_id, d_itt, d_bits, d_first, nd, i_eid, i_pint, i_icid, ni
            l1 = tmp[0]
            if l1 >> np.uint64(63) == 0:
                continue
            base: IntLike = np.int64(l1 & ADDR_51_16)
            length: IntLike = np.int64(1 << 16)
            ident = np.int64((cur1 * L2_ENTRIES) & U32)  # int l2_start_id: wraps
        else:
            base = dt_base
            length = dt_entries * 8
            ident = np.int64(0)
        # scan one device table (page)
        gpa = base
        while True:
            if not _read64(sstart, send, sptr, gpa, tmp):
                info[0], info[1], info[2], info[3] = EFAULT, R_DTE_FAULT, gpa, ident & U32
                return c_icid, c_rd, nc, d_id, d_itt, d_bits, d_first, nd, i_eid, i_pint, i_icid, ni
            w = tmp[0]
            dev_id = ident & U32
            if w >> np.uint64(63) == 0:
                step = np.int64(1)
            else:
                step = np.int64((w >> np.uint64(49)) & np.uint64(0x3FFF))
                if not _check_dev_id(sstart, send, sptr, dt_base, dt_entries, indirect, dev_id, tmp):
                    info[0], info[1], info[2], info[3] = EINVAL, R_DTE_ID, gpa, dev_id
                    return c_icid, c_rd, nc, d_id, d_itt, d_bits, d_first, nd, i_eid, i_pint, i_icid, ni
                itt = np.int64((w >> np.uint64(5)) & np.uint64((1 << 44) - 1)) << 8
                bits = np.int64(w & np.uint64(0x1F)) + 1
                if nd == d_id.shape[0]:
                    d_id = _grow(d_id, nd)
                    d_itt = _grow(d_itt, nd)
                    d_bits = _grow(d_bits, nd)
                    f2 = np.empty(d_id.shape[0] + 1, np.int64)
                    f2[: nd + 1] = d_first[: nd + 1]
                    d_first = f2
                d_id[nd] = dev_id
                d_itt[nd] = itt
                d_bits[nd] = bits
                nd += 1
                # ---- the device's ITT: scan_its_table(itt, (int)(2^bits * 8), 8, 0, ...)
                sz = (np.int64(1) << bits) * 8
                sz32 = sz & U32
                if sz32 >= 1 << 31:
                    ilen = np.uint64(sz32 - (1 << 32))  # a negative int widened to unsigned long
                else:
                    ilen = np.uint64(sz32)
                limit = np.int64(1) << bits
                st = np.zeros(3, np.int64)  # resume state: EventID, GPA, remaining length
                st[0], st[1], st[2] = 0, itt, np.int64(ilen)
                while True:
                    ni, status = _scan_itt(sstart, send, sptr, itt, limit, coll_exists, i_eid, i_pint, i_icid,
                                           ni, st, info, dev_id)
                    if status != ST_FULL:
                        break
                    if ni >= max_ites:
                        info[0], info[1], info[2], info[3], info[4] = ENOMEM, R_TOO_MANY, st[1], dev_id, st[0] & U32
                        status = ST_ERROR
                        break
                    cap = min(max(2 * i_eid.shape[0], 1024), max_ites)
                    i_eid = _grow_to(i_eid, ni, cap)
                    i_pint = _grow_to(i_pint, ni, cap)
                    i_icid = _grow_to(i_icid, ni, cap)
                if status == ST_ERROR:
                    d_first[nd] = ni
                    return c_icid, c_rd, nc, d_id, d_itt, d_bits, d_first, nd, i_eid, i_pint, i_icid, ni
                d_first[nd] = ni
            if step == 0:
                done = True
                break
            bo = step * 8
            if bo >= length:
                break
            ident = (ident + step) & U32
            gpa += bo
            length -= bo
        if done:
            break  # the last DTE: the L1 scan stops too
    return c_icid, c_rd, nc, d_id, d_itt, d_bits, d_first, nd, i_eid, i_pint, i_icid, ni


# ------------------------------------------------------------------------------- save
@jit
def _write_slow(sstart: U64Array, send: U64Array, sptr: U64Array, sro: U8Array, sdirty: U64Array, sdn: I64Array,
                spage0: I64Array, addr: IntLike, w: IntLike) -> bool:
    for k in range(8):
        s = _slot_of(sstart, send, np.uint64(addr + k))
        if s < 0 or sro[s]:
            return False
    for k in range(8):
        a = np.uint64(addr + k)
        s = _slot_of(sstart, send, a)
        view_u8(sptr[s], send[s] - sstart[s])[a - sstart[s]] = np.uint8((w >> np.uint64(8 * k)) & np.uint64(0xFF))
        view_u8(sdirty[s], sdn[s])[np.int64(a >> np.uint64(12)) - spage0[s]] = 1
    return True


@jit(inline="always")
def _write64(sstart: U64Array, send: U64Array, sptr: U64Array, sro: U8Array, sdirty: U64Array, sdn: I64Array,
             spage0: I64Array, addr: IntLike, w: IntLike) -> bool:
    a = np.uint64(addr)
    s = _slot_of(sstart, send, a)
    if s >= 0 and a + np.uint64(8) <= send[s]:
        if sro[s]:
            return False
        p = sptr[s] + (a - sstart[s])
        if p & np.uint64(7) == 0:
            view_u64(p, 1)[0] = w
        else:
            bs = view_u8(p, 8)
            for k in range(8):
                bs[k] = np.uint8((w >> np.uint64(8 * k)) & np.uint64(0xFF))
        d = view_u8(sdirty[s], sdn[s])
        d[np.int64(a >> np.uint64(12)) - spage0[s]] = 1
        d[np.int64((a + np.uint64(7)) >> np.uint64(12)) - spage0[s]] = 1
        return True
    if s < 0:
        return False
    return _write_slow(sstart, send, sptr, sro, sdirty, sdn, spage0, a, w)


@jit(inline="always")
def _log_page(pages: I64Array, npg: IntLike, last: IntLike, addr: IntLike) -> tuple[I64Array, IntLike, IntLike]:
    for a in (addr, addr + 7):
        pg = a >> 12
        if pg != last:
            if npg == pages.shape[0]:
                b = np.empty(2 * pages.shape[0], np.int64)
                b[:npg] = pages[:npg]
                pages = b
            pages[npg] = pg
            npg += 1
            last = pg
    return pages, npg, last


@jit
def _save_itt(sstart: U64Array, send: U64Array, sptr: U64Array, sro: U8Array, sdirty: U64Array, sdn: I64Array,
              spage0: I64Array, itt: IntLike, dev_id: IntLike, i_eid: U32Array, i_pint: U32Array, i_icid: U16Array,
              i_hw: U8Array, v41: BoolLike, j0: IntLike, j1: IntLike, pages: I64Array, npg: IntLike, last: IntLike,
              counts: I64Array, info: I64Array) -> tuple[IntLike, IntLike]:
    """vgic_its_save_itt for ITEs j0..j1 of one device (EventID order); ``pages`` has room for
    the log.

    The hot path calls no function that takes arrays (numba adds reference counting to each
    such call: ~60 ns per ITE, measured) and writes straight into the cached slot."""
    s_lo = np.uint64(1)  # the writable slot of the previous ITE (empty range: none yet)
    s_hi = np.uint64(0)
    s_p = np.uint64(0)
    s_d = np.uint64(0)
    s_dn = np.int64(0)
    s_p0 = np.int64(0)
    written = 0
    for j in range(j0, j1):
        eid = np.int64(i_eid[j])
        gpa = itt + ((eid * 8) & U32)  # ITT + (u32)(EventID * 8)
        if i_hw[j] and not v41:
            info[0], info[1], info[2], info[3], info[4], info[5] = EACCES, S_ITE_HW, gpa, dev_id, eid, i_pint[j]
            break
        nxt: IntLike = np.int64(0)
        if j + 1 < j1:
            # ignore: min() of a numpy and a Python integer is typed only as "comparable"
            nxt = min(np.int64(i_eid[j + 1]) - eid, 0xFFFF)  # type: ignore[assignment]
        w = (np.uint64(nxt) << np.uint64(48)) | (np.uint64(i_pint[j]) << np.uint64(16)) | np.uint64(i_icid[j])
        a = np.uint64(gpa)
        pg = np.int64(a >> np.uint64(12))
        if a >= s_lo and a + np.uint64(8) <= s_hi and (s_p + (a - s_lo)) & np.uint64(7) == 0:
            view_u64(s_p + (a - s_lo), 1)[0] = w
            view_u8(s_d, s_dn)[pg - s_p0] = 1
        else:
            if not _write64(sstart, send, sptr, sro, sdirty, sdn, spage0, gpa, w):
                info[0], info[1], info[2], info[3] = EFAULT, S_ITE_FAULT, gpa, dev_id
                info[4], info[5] = eid, i_pint[j]
                break
            s = _slot_of(sstart, send, a)
            if a + np.uint64(8) <= send[s] and not sro[s]:
                s_lo, s_hi, s_p = sstart[s], send[s], sptr[s]
                s_d, s_dn, s_p0 = sdirty[s], sdn[s], spage0[s]
        if pg != last:  # an 8-byte ITE in a 256-byte aligned ITT never straddles a page
            pages[npg] = pg
            npg += 1
            last = pg
        written += 1
    counts[1] += written
    counts[3] += 8 * written
    return npg, last


@jit
def save_walk(sstart: U64Array, send: U64Array, sptr: U64Array, sro: U8Array, sdirty: U64Array, sdn: I64Array,
              spage0: I64Array,
              dt_valid: BoolLike, dt_base: IntLike, dt_entries: IntLike, indirect: BoolLike, d_id: U32Array,
              d_itt: I64Array, d_bits: U8Array, d_cnt: I64Array, e_ptr: U64Array, p_ptr: U64Array, c_ptr: U64Array,
              h_ptr: U64Array, v41: BoolLike, ct_valid: BoolLike, ct_base: IntLike, ct_entries: IntLike,
              cte_val: U64Array, counts: I64Array, info: I64Array) -> tuple[I64Array, IntLike]:
    """vgic_its_save_tables_v0: devices (sorted by DeviceID, ITEs by EventID) then collections.

    Device k's ITEs are ``d_cnt[k]`` entries at the addresses ``e_ptr[k]`` (EventID, uint32),
    ``p_ptr[k]`` (pINTID, uint32), ``c_ptr[k]`` (ICID, uint16) and ``h_ptr[k]`` (hw, bool).

    ``counts`` (int64[5]) receives dtes, ites, ctes, bytes written and the terminator flag.
    Returns the logged pages (with repeats; the caller makes them unique) and their number.
    """
    tmp = np.zeros(1, np.uint64)
    pages = np.empty(64, np.int64)
    npg: IntLike = np.int64(0)  # not a literal: one compiled _save_itt, not two
    last: IntLike = np.int64(-1)
    nd = d_id.shape[0]
    if dt_valid:
        for k in range(nd):
            dev_id = np.int64(d_id[k])
            # vgic_its_check_id, with the DTE address
            ok: BoolLike = dev_id <= 0xFFFF
            eaddr = np.int64(0)
            if ok:
                if not indirect:
                    ok = dev_id < dt_entries
                    eaddr = dt_base + 8 * dev_id
                else:
                    index = dev_id // L2_ENTRIES
                    ok = index < dt_entries and _read64(sstart, send, sptr, dt_base + 8 * index, tmp)
                    if ok:
                        l1 = tmp[0]
                        ok = l1 >> np.uint64(63) != 0
                        eaddr = np.int64(l1 & ADDR_51_16) + 8 * (dev_id % L2_ENTRIES)
                if ok:
                    ok = _visible(sstart, send, eaddr)
            if not ok:
                info[0], info[1], info[3] = EINVAL, S_DEV_ID, dev_id
                return pages, npg
            itt = d_itt[k]
            m = d_cnt[k]
            if m:
                i_eid = view_u32(e_ptr[k], m)
                # room for the pages this ITT can log: ITE addresses ascend (but for the u32 wrap)
                span = (np.int64(i_eid[m - 1]) - np.int64(i_eid[0])) * 8
                need = 2 * m if np.int64(i_eid[m - 1]) * 8 > U32 else 2 * (span // 4096 + 2)
                need = min(need, 2 * m) + 4
                if pages.shape[0] - npg < need:
                    pg2 = np.empty(max(2 * pages.shape[0], npg + need), np.int64)
                    pg2[:npg] = pages[:npg]
                    pages = pg2
                npg, last = _save_itt(sstart, send, sptr, sro, sdirty, sdn, spage0, itt, dev_id,
                                      i_eid, view_u32(p_ptr[k], m), _view_u16(c_ptr[k], m), view_u8(h_ptr[k], m),
                                      v41, 0, m, pages, npg, last, counts, info)
                if info[0]:
                    return pages, npg
            nxt: IntLike = np.int64(0)
            if k + 1 < nd:
                # ignore: min() of a numpy and a Python integer is typed only as "comparable"
                nxt = min(np.int64(d_id[k + 1]) - dev_id, 0x3FFF)  # type: ignore[assignment]
            w = (np.uint64(1) << np.uint64(63)) | (np.uint64(nxt) << np.uint64(49)) \
                | (np.uint64(itt >> 8) << np.uint64(5)) | np.uint64(d_bits[k] - 1)
            if not _write64(sstart, send, sptr, sro, sdirty, sdn, spage0, eaddr, w):
                info[0], info[1], info[2], info[3] = EFAULT, S_DTE_FAULT, eaddr, dev_id
                return pages, npg
            pages, npg, last = _log_page(pages, npg, last, eaddr)
            counts[0] += 1
            counts[3] += 8
    if ct_valid:
        nc = cte_val.shape[0]
        for k in range(nc + 1):
            gpa = ct_base + 8 * k
            if k == nc:
                if nc == ct_entries:
                    break
                w = np.uint64(0)
            else:
                w = cte_val[k]
            if not _write64(sstart, send, sptr, sro, sdirty, sdn, spage0, gpa, w):
                info[0], info[1], info[2], info[3] = EFAULT, S_CTE_FAULT if k < nc else S_TERM_FAULT, gpa, k
                return pages, npg
            pages, npg, last = _log_page(pages, npg, last, gpa)
            counts[3] += 8
            if k < nc:
                counts[2] += 1
            else:
                counts[4] = 1
    return pages, npg


@jit
def check_device_ites(e_ptr: U64Array, p_ptr: U64Array, d_cnt: I64Array, d_bits: U8Array, unsorted: U8Array,
                      out: I64Array) -> None:
    """Validate the save input in one pass. ``out`` = [device rank or -1, ITE, reason] of the
    first bad ITE: 1 EventID >= 2^bits, 2 pINTID < 8192, 3 duplicate EventID (found in sorted
    devices only); ``unsorted[k]`` = 1 when device k's EventIDs are not ascending."""
    out[0] = -1
    for k in range(d_bits.shape[0]):
        m = d_cnt[k]
        if m == 0:
            continue
        eid = view_u32(e_ptr[k], m)
        pint = view_u32(p_ptr[k], m)
        limit = np.int64(1) << np.int64(d_bits[k])
        prev = np.int64(-1)
        for j in range(m):
            e = np.int64(eid[j])
            if e >= limit:
                out[0], out[1], out[2] = k, j, 1
                return
            if pint[j] < 8192:
                out[0], out[1], out[2] = k, j, 2
                return
            if e < prev:
                unsorted[k] = 1
            elif e == prev and not unsorted[k]:
                out[0], out[1], out[2] = k, j, 3
                return
            prev = e
