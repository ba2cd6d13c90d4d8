"""The slow, literal, obviously-correct reference model of KVM's pending-table loops.

One function per kernel function, written from the kernel's documented behaviour (docs/kernel-behaviour.md) (never
from kernel code), one LPI at a time, with a comment saying which kernel behaviour each line implements:

* :func:`ref_save`                -- ``vgic_v3_save_pending_tables``
* :func:`ref_sync_pending_status` -- ``vgic_v3_lpi_sync_pending_status``, once per LPI (the restore sync)
* :func:`ref_sync_pending_table`  -- ``its_sync_lpi_pending_table`` at EnableLPIs 0->1 (the scan)

Guest memory is touched **only** through the public 1-byte API of :class:`vlpi.GuestMemory`
(``mem.read(gpa, 1)``, ``mem.write(gpa, [v])``), so faults, read-only slots and the dirty log
behave exactly as they do for the engine. The LPIs are plain numpy arrays (``intid``,
``target_vcpu``, ``pending_latch``, ``hw``), one row per LPI in creation order.

Each function mutates ``mem`` (and, for the restore functions, the ``pending_latch`` array it is
given) in place, like the kernel, and returns a :class:`RefResult` recording every access in
issue order. Nothing is raised on a guest-memory fault: the fault is recorded in
``RefResult.fault`` and ``RefResult.ret`` is ``-EFAULT``, like the kernel's return code.

These functions are also the pure-Python baseline of the benchmark suite; keep them simple.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import numpy as np

from vlpi import GuestMemory, GuestMemoryFault

__all__ = [
    "PENDBASER_ADDRESS_MASK",
    "RefFault",
    "RefResult",
    "pendbase",
    "ref_save",
    "ref_sync_pending_status",
    "ref_sync_pending_table",
]

#: GICR_PENDBASER_ADDRESS(x) = x & GENMASK(51, 16)
PENDBASER_ADDRESS_MASK = ((1 << 52) - 1) & ~((1 << 16) - 1)
#: "no cached byte": last_ptr starts as all-ones
ALL_ONES = (1 << 64) - 1
PAGE_SHIFT = 12


def pendbase(pendbaser_value: int) -> int:
    """Pending-table base address of one raw GICR_PENDBASER value (bits 51:16 only)."""
    return int(pendbaser_value) & PENDBASER_ADDRESS_MASK


@dataclass
class RefFault:
    """The first faulting 1-byte guest access of a walk."""

    gpa: int
    intid: int
    vcpu: int
    write: bool


@dataclass
class RefResult:
    """Everything the kernel loop did, in issue order.

    Attributes
    ----------
    ret : int
        0 or ``-errno.EFAULT`` (the kernel's return code).
    read_trace : list of int
        GPA of every 1-byte guest read issued, including a faulting one.
    write_trace : list of (int, int)
        (GPA, value) of every 1-byte guest write issued, including a faulting one.
    vpt_trace : list of (int, int, int)
        (vcpu, byte, bit) of every VPT bit consulted (save only).
    guest_reads, guest_writes, vpt_reads : int
        Lengths of the three traces (the report counts).
    fault : RefFault or None
        The first faulting access (save, sync_pending_table, sync_pending_status with
        ``stop_on_error``); for sync_pending_status without ``stop_on_error``, the first of
        possibly several.
    vpes_unmapped, vpes_remapped : int
        vPEs unmapped before / remapped after the save walk (``has_gicv4_1`` only).
    lpis_total, lpis_skipped, lpis_synced : int
        LPIs in the table; LPIs walked past because ``target_vcpu == -1`` (up to the fault);
        LPIs whose ``pending_latch`` was assigned from guest RAM without error (restore
        functions; an LPI whose clearing write faulted has its latch assigned but is not
        counted).
    lpi_errno : numpy.ndarray or None
        int32 per LPI (array order), 0 or ``errno.EFAULT`` at each LPI whose access faulted
        (restore functions).
    bytes_changed : int
        Distinct guest bytes whose value after the call differs from before it.
    dirty_pages : numpy.ndarray
        Sorted unique 4 KiB page numbers of the successful writes.
    pending_latch : numpy.ndarray or None
        The (mutated) pending_latch array (restore functions).
    """

    ret: int = 0
    read_trace: list = field(default_factory=list)
    write_trace: list = field(default_factory=list)
    vpt_trace: list = field(default_factory=list)
    fault: RefFault | None = None
    vpes_unmapped: int = 0
    vpes_remapped: int = 0
    lpis_total: int = 0
    lpis_skipped: int = 0
    lpis_synced: int = 0
    lpi_errno: np.ndarray | None = None
    bytes_changed: int = 0
    dirty_pages: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pending_latch: np.ndarray | None = None

    @property
    def guest_reads(self) -> int:
        return len(self.read_trace)

    @property
    def guest_writes(self) -> int:
        return len(self.write_trace)

    @property
    def vpt_reads(self) -> int:
        return len(self.vpt_trace)


class _Tracer:
    """Issues 1-byte guest accesses through the public GuestMemory API and logs them.

    Also remembers the value each written byte had before its first write (bookkeeping for
    ``bytes_changed``; the extra read is not part of the kernel's trace).
    """

    def __init__(self, mem: GuestMemory, res: RefResult) -> None:
        self.mem = mem
        self.res = res
        self.before: dict[int, int] = {}
        self.written_ok: list[int] = []

    def read_u8(self, gpa: int) -> int | None:
        """kvm_read_guest_lock(gpa, 1 byte). None on -EFAULT; the access counts as issued."""
        self.res.read_trace.append(gpa)
        try:
            return int(self.mem.read(gpa, 1)[0])
        except GuestMemoryFault:
            return None

    def write_u8(self, gpa: int, value: int) -> bool:
        """kvm_write_guest_lock(gpa, 1 byte). False on -EFAULT; the access counts as issued."""
        self.res.write_trace.append((gpa, value))
        if gpa not in self.before:
            try:
                self.before[gpa] = int(self.mem.read(gpa, 1)[0])
            except GuestMemoryFault:
                pass  # unreadable => the write below faults too
        try:
            self.mem.write(gpa, np.array([value], dtype=np.uint8))
        except GuestMemoryFault:
            return False
        self.written_ok.append(gpa)
        return True

    def finish(self) -> RefResult:
        changed = 0
        ok = set(self.written_ok)
        for gpa, old in self.before.items():
            if gpa in ok and int(self.mem.read(gpa, 1)[0]) != old:
                changed += 1
        self.res.bytes_changed = changed
        self.res.dirty_pages = np.unique(np.array([g >> PAGE_SHIFT for g in self.written_ok], dtype=np.int64))
        return self.res


def _walk_order(intid: np.ndarray, order: str) -> list[int]:
    if order == "intid":
        # Linux >= 6.9: xa_for_each over dist->lpi_xa = ascending INTID
        return sorted(range(len(intid)), key=lambda i: int(intid[i]))
    if order == "insertion":
        # Linux 5.13 - 6.8: list_for_each_entry, LPIs in creation (array) order
        return list(range(len(intid)))
    raise ValueError(f"order must be 'intid' or 'insertion', got {order!r}")


def ref_save(
    mem: GuestMemory,
    pendbaser,
    intid,
    target_vcpu,
    pending_latch,
    hw,
    vpt=None,
    has_gicv4_1: bool = False,
    order: str = "intid",
) -> RefResult:
    """``vgic_v3_save_pending_tables`` one LPI at a time. Mutates ``mem``.

    Parameters
    ----------
    mem : vlpi.GuestMemory
        Guest memory; written in place (partial writes kept on a fault, like the kernel).
    pendbaser : sequence of int
        Raw GICR_PENDBASER per vCPU.
    intid, target_vcpu, pending_latch, hw : array-like
        One row per LPI, in creation order. ``target_vcpu == -1`` means no target.
    vpt : numpy.ndarray, optional
        uint8 ``[n_vcpus, vpt_bytes]``; read only for hw LPIs when ``has_gicv4_1``.
    has_gicv4_1 : bool
        Host has GICv4.1 (vPEs unmapped around the walk, VPT consulted).
    order : {"intid", "insertion"}
        Walk order.

    Returns
    -------
    RefResult
    """
    pendbaser = [int(p) for p in np.asarray(pendbaser, dtype=np.uint64).reshape(-1)]
    intid = np.asarray(intid)
    target_vcpu = np.asarray(target_vcpu)
    pending_latch = np.asarray(pending_latch)
    hw = np.asarray(hw)
    walk = _walk_order(intid, order)
    res = RefResult(lpis_total=len(intid))
    io = _Tracer(mem, res)
    n_vcpus = len(pendbaser)

    vlpi_avail = bool(has_gicv4_1)  # global host property, not per VM
    if vlpi_avail:
        res.vpes_unmapped = n_vcpus  # unmap_all_vpes before the walk, even with no LPI

    last_ptr = ALL_ONES  # cache keyed on the absolute GPA, "no cached byte" (ca185b260951)
    val = 0
    for i in walk:
        v = int(target_vcpu[i])
        if v == -1:
            res.lpis_skipped += 1  # target_vcpu == NULL: skipped silently, cache untouched
            continue
        lpi = int(intid[i])
        ptr = pendbase(pendbaser[v]) + lpi // 8  # no EnableLPIs/IDbits/size check: bits [51:16] + intid/8
        bit = lpi % 8  # LSB = lowest INTID
        if ptr != last_ptr:  # read only when the GPA differs from the previous one (write-through cache)
            got = io.read_u8(ptr)
            if got is None:  # -EFAULT: stop, keep earlier writes
                res.fault = RefFault(ptr, lpi, v, False)
                res.ret = -errno.EFAULT
                break
            val = got
            last_ptr = ptr  # set only after a successful read
        stored = bool(val & (1 << bit))
        pending = bool(pending_latch[i])  # default: pending_latch
        if bool(hw[i]) and vlpi_avail:
            # VPT bit replaces pending_latch completely for forwarded LPIs on GICv4.1 (GICv4.0: pending_latch)
            byte, vbit = lpi // 8, lpi % 8
            res.vpt_trace.append((v, byte, vbit))
            pending = bool(int(vpt[v, byte]) & (1 << vbit))
        if stored == pending:
            continue  # unchanged bit: no write
        val = (val | (1 << bit)) if pending else (val & ~(1 << bit) & 0xFF)
        if not io.write_u8(ptr, val):  # one 1-byte write per changed bit, issued at once
            res.fault = RefFault(ptr, lpi, v, True)
            res.ret = -errno.EFAULT
            break

    if vlpi_avail:
        res.vpes_remapped = n_vcpus  # map_all_vpes always, on success and on error
    return io.finish()


def ref_sync_pending_status(
    mem: GuestMemory,
    pendbaser,
    intid,
    target_vcpu,
    pending_latch: np.ndarray,
    stop_on_error: bool = True,
) -> RefResult:
    """``vgic_v3_lpi_sync_pending_status`` for each LPI in array order.

    Mutates ``mem`` (consumed bits cleared) and ``pending_latch`` (assigned) in place.

    Parameters
    ----------
    mem : vlpi.GuestMemory
    pendbaser : sequence of int
        Raw GICR_PENDBASER per vCPU.
    intid, target_vcpu : array-like
        One row per LPI; the restore creates LPIs in this (array) order.
    pending_latch : numpy.ndarray
        bool/uint8, assigned in place.
    stop_on_error : bool
        True: stop at the first faulting access (the restore fails). False: record
        ``errno.EFAULT`` for that LPI in ``lpi_errno`` and carry on (a MAPTI that fails).

    Returns
    -------
    RefResult
    """
    pendbaser = [int(p) for p in np.asarray(pendbaser, dtype=np.uint64).reshape(-1)]
    intid = np.asarray(intid)
    target_vcpu = np.asarray(target_vcpu)
    res = RefResult(lpis_total=len(intid), pending_latch=pending_latch)
    res.lpi_errno = np.zeros(len(intid), dtype=np.int32)
    io = _Tracer(mem, res)

    def fail(i: int, gpa: int, lpi: int, v: int, write: bool) -> None:
        res.lpi_errno[i] = errno.EFAULT
        if res.fault is None:
            res.fault = RefFault(gpa, lpi, v, write)
            res.ret = -errno.EFAULT

    for i in range(len(intid)):  # vgic_add_lpi is called in creation (array) order
        v = int(target_vcpu[i])
        if v == -1:
            res.lpis_skipped += 1
            continue  # no target: nothing read, nothing cleared
        lpi = int(intid[i])
        ptr = pendbase(pendbaser[v]) + lpi // 8  # no EnableLPIs/PTZ/IDbits/size check
        bit = lpi % 8
        val = io.read_u8(ptr)  # read every time: no cache
        if val is None:
            fail(i, ptr, lpi, v, False)  # read error: latch untouched
            if stop_on_error:
                break
            continue
        status = bool(val & (1 << bit))
        pending_latch[i] = status  # assignment: may also clear
        if status:
            val &= ~(1 << bit) & 0xFF  # "clear consumed data": the bit is consumed
            if not io.write_u8(ptr, val):
                fail(i, ptr, lpi, v, True)  # latch already assigned before the write
                if stop_on_error:
                    break
                continue
        res.lpis_synced += 1  # synced without error
    return io.finish()


def ref_sync_pending_table(
    mem: GuestMemory,
    pendbaser,
    intid,
    target_vcpu,
    pending_latch: np.ndarray,
    vcpu: int,
) -> RefResult:
    """``its_sync_lpi_pending_table(vcpu)`` at GICR_CTLR.EnableLPIs 0->1.

    Mutates ``pending_latch`` in place; never writes guest memory.

    Parameters
    ----------
    mem : vlpi.GuestMemory
    pendbaser : sequence of int
        Raw GICR_PENDBASER per vCPU.
    intid, target_vcpu : array-like
        One row per LPI (any order: the scan walks ascending INTID).
    pending_latch : numpy.ndarray
        bool/uint8, assigned in place for LPIs that target ``vcpu``.
    vcpu : int
        The redistributor whose EnableLPIs was set.

    Returns
    -------
    RefResult
    """
    pendbaser = [int(p) for p in np.asarray(pendbaser, dtype=np.uint64).reshape(-1)]
    intid = np.asarray(intid)
    target_vcpu = np.asarray(target_vcpu)
    res = RefResult(lpis_total=len(intid), pending_latch=pending_latch)
    res.lpi_errno = np.zeros(len(intid), dtype=np.int32)
    io = _Tracer(mem, res)
    base = pendbase(pendbaser[vcpu])  # this vCPU's table for every LPI
    last_byte_offset = ALL_ONES  # cache keyed on the byte offset, not the GPA
    val = 0
    for i in _walk_order(intid, "intid"):  # all LPIs of the VM, INTID order
        lpi = int(intid[i])
        byte_offset, bit = lpi // 8, lpi % 8
        if byte_offset != last_byte_offset:
            got = io.read_u8(base + byte_offset)  # read even for LPIs of other vCPUs
            if got is None:  # a fault, even for an unrelated LPI, aborts the scan
                res.fault = RefFault(base + byte_offset, lpi, vcpu, False)
                res.ret = -errno.EFAULT
                res.lpi_errno[i] = errno.EFAULT
                break
            val = got
            last_byte_offset = byte_offset
        if int(target_vcpu[i]) == vcpu:  # only LPIs targeting this vCPU
            pending_latch[i] = bool(val & (1 << bit))  # assignment, can clear; RAM not cleared
            res.lpis_synced += 1
    return io.finish()
