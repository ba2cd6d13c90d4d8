"""The bytes a save must touch, counted exactly from a scenario, and the roofline time they imply.

A save of pending tables has to move at least these bytes between memory and the CPU, whatever
the algorithm (counted in 64-byte cache lines of *host* memory, i.e. at the host addresses where
the guest RAM and the VPTs live, since that is what crosses the memory bus):

* ``pt_lines_read``    -- distinct cache lines of the guest pending tables holding a targeted LPI's
  byte (``pendbase[vcpu] + intid // 8``): every one must be read to merge the LPI's bit.
* ``pt_lines_written`` -- the subset of those lines holding at least one byte whose value the
  save changes: they must be written back (a line whose bytes all keep their value need not be).
* ``vpt_lines_read``   -- distinct cache lines of the VPTs holding the bit of a forwarded (hw) LPI,
  when the host has GICv4.1 (only then is the VPT consulted).
* ``state_bytes``      -- the per-LPI state the save must read: its inputs that change between
  saves, ``pending_latch`` and ``hw``, one bit each (``2 * ceil(n / 8)`` bytes per VM). The
  INTID -> (vCPU, byte, bit) layout is not counted: it is fixed between saves, and for the
  round-robin and blocked layouts of the benchmarks it is a handful of numbers, not per-LPI data.
  ``state_bytes_bytewise`` (one byte per flag, ``2 * n``) is recorded for comparison.

The roofline time is ``read_only_bytes / read_bandwidth + written_bytes / rmw_bandwidth``, where
``written_bytes = 64 * pt_lines_written`` (lines read and written back in place: priced at the
measured in-place read-modify-write bandwidth, bytes of buffer updated per second) and
``read_only_bytes`` is everything else (pending-table lines only read, VPT lines, state), priced
at the measured read-only bandwidth. Both bandwidths are measured by
``benchmarks/test_bench_roofline.py`` in the same run as the save benchmarks.

The counts assume what the benchmark scenarios guarantee and :func:`save_touch` checks: no two
targeted LPIs share a bit of guest memory (vCPU tables do not alias), so every changed LPI bit
changes its byte.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LINE", "save_touch", "roofline_seconds"]

LINE = 64  # bytes per cache line
PENDBASER_ADDRESS_MASK = np.uint64(((1 << 52) - 1) & ~((1 << 16) - 1))  # GENMASK(51, 16)


def _host_addr(mem, gpa: np.ndarray) -> np.ndarray:
    """Host virtual address of each guest byte (public memslot list; every byte must be mapped)."""
    slots = mem.slots
    starts = np.array([s.gpa for s in slots], dtype=np.uint64)
    ends = np.array([s.end for s in slots], dtype=np.uint64)
    idx = np.searchsorted(starts, gpa, side="right") - 1
    if gpa.size and (idx.min() < 0 or np.any(gpa >= ends[np.maximum(idx, 0)])):
        raise ValueError("save_touch: a pending-table byte is not backed by a memslot")
    host = np.array([s.data.ctypes.data for s in slots], dtype=np.uint64)
    return host[idx] + (gpa - starts[idx])


def _lines(addr: np.ndarray) -> int:
    return int(np.unique(addr // np.uint64(LINE)).size) if addr.size else 0


def save_touch(jobs, has_gicv4_1: bool) -> dict:
    """Count what a save of ``jobs`` (``(mem, pendbaser, lpis, vpt)`` per VM, in their current
    state) must touch. Returns the counts of the module docstring summed over the VMs, plus
    ``n_lpis`` and the byte totals ``read_only_bytes``, ``written_bytes`` and ``bytes_touched``."""
    pt_r = pt_w = vpt_r = state = state_bytewise = n_total = 0
    for mem, pendbaser, lpis, vpt in jobs:
        n = len(lpis)
        n_total += n
        state += 2 * (-(-n // 8))
        state_bytewise += 2 * n
        tgt = np.asarray(lpis.target_vcpu).astype(np.int64)
        sel = tgt >= 0
        iid = np.asarray(lpis.intid)[sel].astype(np.uint64)
        t = tgt[sel]
        base = np.asarray(pendbaser, dtype=np.uint64) & PENDBASER_ADDRESS_MASK
        gpa = base[t] + (iid >> np.uint64(3))
        bit = (iid & np.uint64(7)).astype(np.uint8)
        key = (gpa << np.uint64(3)) | bit.astype(np.uint64)
        if np.unique(key).size != key.size:
            raise ValueError("save_touch: two targeted LPIs share a guest bit (aliasing tables): not supported")
        host = _host_addr(mem, gpa)
        pt_r += _lines(host)
        data_bytes = _gather(mem, gpa)
        have = (data_bytes >> bit) & 1
        want = np.asarray(lpis.pending_latch)[sel].astype(np.uint8) != 0
        hw = np.asarray(lpis.hw)[sel].astype(bool) if has_gicv4_1 else np.zeros(t.size, bool)
        if hw.any():
            if vpt is None:
                raise ValueError("save_touch: hw LPIs on GICv4.1 but no vpt")
            v = np.asarray(vpt)
            byte = (iid[hw] >> np.uint64(3)).astype(np.int64)
            want = want.astype(np.uint8)
            want[hw] = (v[t[hw], byte] >> bit[hw]) & 1
            vaddr = np.uint64(v.ctypes.data) + (t[hw] * v.strides[0]).astype(np.uint64) + byte.astype(np.uint64)
            vpt_r += _lines(vaddr)
        changed = have != want.astype(np.uint8)
        pt_w += _lines(host[changed])
    written = LINE * pt_w
    read_only = LINE * (pt_r - pt_w) + LINE * vpt_r + state
    return {
        "n_lpis": n_total,
        "pt_lines_read": pt_r,
        "pt_lines_written": pt_w,
        "vpt_lines_read": vpt_r,
        "state_bytes": state,
        "state_bytes_bytewise": state_bytewise,
        "read_only_bytes": read_only,
        "written_bytes": written,
        "bytes_touched": read_only + written,
    }


def _gather(mem, gpa: np.ndarray) -> np.ndarray:
    """Current guest bytes at ``gpa`` (vectorised, through the public memslot list)."""
    out = np.empty(gpa.size, np.uint8)
    for s in mem.slots:
        sel = (gpa >= np.uint64(s.gpa)) & (gpa < np.uint64(s.end))
        if sel.any():
            out[sel] = s.data[(gpa[sel] - np.uint64(s.gpa)).astype(np.int64)]
    return out


def roofline_seconds(touch: dict, read_bw: float, rmw_bw: float) -> float:
    """Roofline time of a save touching ``touch`` (from :func:`save_touch`): read-only bytes at
    ``read_bw`` plus written-back bytes at ``rmw_bw`` (bytes per second each)."""
    return touch["read_only_bytes"] / read_bw + touch["written_bytes"] / rmw_bw
