"""Literal compiled ports of the kernel's loops: the exact sequential path and the baseline.

``walk_save`` is ``vgic_v3_save_pending_tables`` one LPI at a time in walk order:
GPA-keyed 1-byte read cache, VPT bit for hw LPIs on GICv4.1, one 1-byte write per changed bit,
stop at the first fault. ``walk_restore`` is ``vgic_v3_lpi_sync_pending_status`` for each
LPI in row order. They are used by the engine for faulting tables with ``atomic=False`` (where
the kernel's partial result is wanted) and by the benchmarks as "the kernel's algorithm at native
speed". Every access resolves its memslot like KVM does (binary search over sorted slots).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from vlpi._kernels._jit import jit, view_u8
from vlpi._kernels.pending import _find_slot
from vlpi._typing import BoolLike, I32Array, IntLike, U8Array, U32Array, U64Array

# (reads, writes, vpt_reads or synced, fault_row, fault_is_write, fault_gpa, n_recorded)
_WalkResult = tuple[int, int, int, int, int, IntLike, int]

NO_ADDR = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


@jit
def walk_save(walk: I32Array, use_walk: BoolLike, intid: U32Array, target: npt.NDArray[np.signedinteger[Any]],
              latch: U8Array, hw: U8Array, base: U64Array, vpt: U8Array, vb: IntLike, use_vpt: BoolLike,
              sstart: U64Array, send: U64Array, sptr: U64Array, sro: U8Array, wr_addr: U64Array,
              wr_old: U8Array) -> _WalkResult:
    """Returns (reads, writes, vpt_reads, fault_row, fault_is_write, fault_gpa, n_recorded).

    Every write's GPA and the byte value before it are recorded in ``wr_addr``/``wr_old`` (for
    bytes_changed and the dirty log); ``fault_row`` is -1 when the walk completed."""
    n = intid.shape[0]
    nslots = sstart.shape[0]
    reads = 0
    writes = 0
    vpt_reads = 0
    last = NO_ADDR
    val = 0
    for k in range(n):
        i = walk[k] if use_walk else k
        v = target[i]
        if v < 0:
            continue
        iid = intid[i]
        addr = base[v] + np.uint64(iid >> 3)
        if addr != last:
            reads += 1
            s = _find_slot(sstart, send, nslots, addr)
            if s < 0:
                return reads, writes, vpt_reads, i, 0, addr, writes
            val = view_u8(sptr[s], send[s] - sstart[s])[addr - sstart[s]]
            last = addr
        bit = iid & 7
        want = np.uint8(latch[i] != 0)  # any nonzero flag byte is True
        if use_vpt and hw[i] != 0:
            vpt_reads += 1
            want = (vpt[v * vb + (iid >> 3)] >> bit) & 1
        if ((val >> bit) & 1) == want:
            continue
        val ^= 1 << bit
        writes += 1
        s = _find_slot(sstart, send, nslots, addr)
        if sro[s]:
            return reads, writes, vpt_reads, i, 1, addr, writes - 1
        mem = view_u8(sptr[s], send[s] - sstart[s])
        wr_addr[writes - 1] = addr
        wr_old[writes - 1] = mem[addr - sstart[s]]
        mem[addr - sstart[s]] = val
    return reads, writes, vpt_reads, -1, 0, np.uint64(0), writes


@jit
def walk_restore(intid: U32Array, target: npt.NDArray[np.signedinteger[Any]], latch: U8Array, base: U64Array,
                 sstart: U64Array, send: U64Array, sptr: U64Array, sro: U8Array, stop_on_error: BoolLike,
                 errno_out: I32Array, wr_addr: U64Array, wr_old: U8Array) -> _WalkResult:
    """Returns (reads, writes, synced, fault_row, fault_is_write, fault_gpa, n_recorded).

    With ``stop_on_error`` the walk stops at the first fault (``fault_row``); otherwise every
    faulting LPI gets ``errno_out[i] = 14`` (EFAULT) and the walk carries on."""
    n = intid.shape[0]
    nslots = sstart.shape[0]
    reads = 0
    writes = 0
    synced = 0
    nrec = 0
    f_row = -1
    f_w = 0
    f_gpa = np.uint64(0)
    for i in range(n):
        v = target[i]
        if v < 0:
            continue
        iid = intid[i]
        addr = base[v] + np.uint64(iid >> 3)
        reads += 1
        s = _find_slot(sstart, send, nslots, addr)
        if s < 0:
            errno_out[i] = 14
            if f_row < 0:
                f_row = i
                f_w = 0
                f_gpa = addr
            if stop_on_error:
                return reads, writes, synced, f_row, f_w, f_gpa, nrec
            continue
        mem = view_u8(sptr[s], send[s] - sstart[s])
        val = mem[addr - sstart[s]]
        bit = iid & 7
        st = (val >> bit) & 1
        latch[i] = st
        if st:
            writes += 1
            if sro[s]:
                errno_out[i] = 14
                if f_row < 0:
                    f_row = i
                    f_w = 1
                    f_gpa = addr
                if stop_on_error:
                    return reads, writes, synced, f_row, f_w, f_gpa, nrec
                continue
            wr_addr[nrec] = addr
            wr_old[nrec] = val
            nrec += 1
            mem[addr - sstart[s]] = val & ~(1 << bit)
        synced += 1
    return reads, writes, synced, f_row, f_w, f_gpa, nrec
