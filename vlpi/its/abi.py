"""The KVM ITS table ABI, revision 0: what ``SAVE_TABLES`` writes and ``RESTORE_TABLES`` reads.

KVM keeps the virtual ITS's devices, ITEs and collections in kernel lists. Migration flushes them
into the tables the guest gave the ITS (``GITS_BASER0`` = device table, ``GITS_BASER1`` =
collection table) so that they travel as ordinary guest RAM, and rebuilds the lists from those
tables on the destination (``vgic_its_save_tables_v0`` / ``vgic_its_restore_tables_v0``).
Every entry is one little-endian 64-bit word (``ABI_0_ESZ = 8``):

==========  =============================================================================
DTE         V[63] | next[62:49] | ITT_addr[48:5] (= ITT GPA >> 8) | Size[4:0] (EventID bits - 1)
ITE         next[63:48] | pINTID[47:16] (0 = invalid) | ICID[15:0]
CTE         V[63] | RDBase[51:16] (vCPU id; KVM keeps bits 47:16 as a u32) | ICID[15:0]
L1 entry    V[63] | L2 page GPA[51:16] (two-level device table, 8192 DTEs per 64 KiB page)
==========  =============================================================================

``next`` is the ID delta to the following saved entry (0 = last), capped at 2^14 - 1 (DTE) and
2^16 - 1 (ITE). DTEs are indexed by DeviceID, ITEs by EventID at ``ITT_addr + (u32)(8 *
EventID)`` (the kernel's 32-bit product: it wraps for ITTs of more than 2^29 events); CTEs are
packed from the collection table's base in collection-list (creation) order.

Save (:func:`save_tables_v0`): devices in DeviceID order; for each, the DTE address is resolved
(``vgic_its_check_id``: flat, or two-level through the L1 entry read from guest memory), then
the ITT is written (ITEs in EventID order; a ``hw`` ITE without GICv4.1 fails with ``EACCES``
and leaves earlier writes in place), then the DTE. Then the CTEs and, if the table is not full,
one all-zero terminator. Slots between saved entries are never written.

Restore (:func:`restore_tables_v0`): collections first (until an invalid CTE or the end of the
table), then devices by the ``scan_its_table`` rule (an invalid entry steps 1, a valid one steps
``next``, ``next == 0`` stops), each device's ITT by the same rule. The order of the restored
ITEs is the order in which KVM creates the LPIs (``vgic_add_lpi``), which is where pending bits
are pulled out of the pending tables (:func:`vlpi.sync_pending_status`).

Both walks are compiled (``vlpi._kernels.its_tables``) and follow the kernel's order of
accesses entry by entry, so where they stop and what they leave behind are the kernel's; no
Python runs per entry. Writes land in the slots' arrays and mark their pages dirty; reads come
straight from them. The scalar reference they are tested against is ``tests/its_table_walker.py``.
Restore output grows with the ITEs found (about 10 bytes each) and is capped (``max_ites``):
a table naming more ITEs than memory can hold is refused with ``ENOMEM``.

Modelling notes
---------------
* "Visible" (``kvm_is_visible_gfn``) is modelled at byte granularity: the entry's first byte lies
  in some memslot (read-only slots count). A read or write of an 8-byte entry faults
  (``EFAULT``) unless all its bytes are mapped (and writable for a write); a faulting write
  writes nothing of that entry.
* ``Entry_Size``, ``Type`` and ``Page_Size`` of the BASER values are ignored (KVM forces them to
  8 bytes, Device/Collection and 64 KiB); ``Indirect`` is ignored for ``baser1`` (KVM forces 0).
* DeviceIDs of a two-level scan are computed in 32-bit arithmetic as in the kernel
  (``l2_start_id = l1_index * 8192`` wraps modulo 2^32).
* Save fails with ``EINVAL`` on a device whose DeviceID fails ``vgic_its_check_id``. A 2026
  kernel selftest suggests newer kernels skip such devices instead (not confirmed in the
  kernel's source); that variant is not modelled.
* A DeviceID may appear twice in the device list (KVM never checks on restore): both devices
  are saved, in list order.
* Restore only reads. KVM interleaves ``vgic_add_lpi`` (which clears pending bits in guest RAM)
  with the table scan; the caller (:meth:`vlpi.its.VirtualITS.restore_tables`) creates the LPIs
  afterwards, in the returned order, up to the first failure. The two differ only if a pending
  table overlaps an ITS table that is still to be scanned.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from vlpi._kernels import its_tables as _k
from vlpi._repr import fields_repr
from vlpi._typing import U64Array
from vlpi.errors import GuestMemoryFault
from vlpi.memory import GuestMemory

__all__ = [
    "ABI_REVISIONS",
    "COLLECTION_NOT_MAPPED",
    "CTE_DTYPE",
    "CTE_FIELDS",
    "DTE_DTYPE",
    "DTE_FIELDS",
    "ITE_DTYPE",
    "ITE_FIELDS",
    "L1E_FIELDS",
    "ItsDevice",
    "ItsSaveReport",
    "ItsTableError",
    "baser_table",
    "decode_cte",
    "decode_dte",
    "decode_ite",
    "decode_l1e",
    "encode_cte",
    "encode_dte",
    "encode_ite",
    "encode_l1e",
    "restore_tables_v0",
    "save_tables_v0",
]

COLLECTION_NOT_MAPPED = 0xFFFF_FFFF
ABI_REVISIONS = (0,)

ESZ = 8  # ABI_0_ESZ: DTE, ITE and CTE are all 8 bytes
TABLE_PAGE = 1 << 16  # KVM's ITS supports only 64 KiB pages
L2_ENTRIES = TABLE_PAGE // ESZ  # DTEs per level-2 page: 8192
VITS_MAX_DEVID = 0xFFFF  # DevBits = 16
MIN_LPI = 8192
DTE_NEXT_MAX = (1 << 14) - 1
ITE_NEXT_MAX = (1 << 16) - 1
MAX_EVENTID_BITS = 32  # Size is a 5-bit field; MAPD allows at most 16, a restored DTE up to 32

# Raw entries: one little-endian 64-bit word each (ABI revision 0).
DTE_DTYPE = np.dtype("<u8")
ITE_DTYPE = np.dtype("<u8")
CTE_DTYPE = np.dtype("<u8")

#: Field sets of ABI revision 0: name -> (shift, width) within the 64-bit entry.
FIELDS_V0: dict[str, dict[str, tuple[int, int]]] = {
    "dte": {"valid": (63, 1), "next": (49, 14), "itt_addr": (5, 44), "size": (0, 5)},
    "ite": {"next": (48, 16), "pintid": (16, 32), "icid": (0, 16)},
    "cte": {"valid": (63, 1), "rdbase": (16, 32), "icid": (0, 16)},
    "l1e": {"valid": (63, 1), "l2_addr": (16, 36)},
}

#: Decoded entries (``decode_*`` results). ``itt_addr`` and ``l2_addr`` are byte GPAs.
DTE_FIELDS = np.dtype([("valid", "?"), ("next", "<u2"), ("itt_addr", "<u8"), ("size", "u1")])
ITE_FIELDS = np.dtype([("next", "<u2"), ("pintid", "<u4"), ("icid", "<u2")])
CTE_FIELDS = np.dtype([("valid", "?"), ("rdbase", "<u4"), ("icid", "<u2")])
L1E_FIELDS = np.dtype([("valid", "?"), ("l2_addr", "<u8")])

_ADDR_51_16 = ((1 << 52) - 1) & ~((1 << 16) - 1)
_U64 = np.uint64


# ---------------------------------------------------------------------------------- errors
class ItsTableError(OSError):
    """``SAVE_TABLES`` / ``RESTORE_TABLES`` failed the way KVM fails.

    Attributes
    ----------
    errno : int
        ``EINVAL`` (an ID fails ``vgic_its_check_id`` or a restored entry is inconsistent),
        ``EACCES`` (a forwarded LPI without GICv4.1), ``EFAULT`` (guest memory) or ``EEXIST``
        (a restored collection already exists).
    where : str
        Which table, entry and GPA.
    gpa : int or None
        GPA of the offending entry, when there is one.
    report : ItsSaveReport or None
        Save only: what was written before the error (those writes stay in guest memory).
    collections, devices : list or None
        Restore only: what the walk restored before the error, in restore order (the failing
        device is included with the ITEs restored before the failure). ``vgic_add_lpi`` runs
        for each listed ITE before the next entry is read, so their pending bits are consumed
        whatever the error.
    table : str or None
        Restore only: ``"collection"`` or ``"device"``, the table whose walk failed. KVM frees
        only the collection list after a collection-table error (and does not scan the device
        table); after a device-table error it frees the device list, then the collection list.
    """

    def __init__(
        self,
        err: int,
        message: str,
        *,
        where: str = "",
        gpa: int | None = None,
        report: ItsSaveReport | None = None,
        collections: list[tuple[int, int]] | None = None,
        devices: list[ItsDevice] | None = None,
        table: str | None = None,
    ) -> None:
        super().__init__(err, message)
        self.where = where
        self.gpa = gpa
        self.report = report
        self.collections = collections
        self.devices = devices
        self.table = table

    def __reduce__(self) -> tuple[Callable[..., ItsTableError], tuple[Any, ...]]:
        return (
            _rebuild_error,
            (self.errno, self.strerror, self.where, self.gpa, self.report, self.collections, self.devices, self.table),
        )


def _rebuild_error(
    err: int,
    message: str,
    where: str,
    gpa: int | None,
    report: ItsSaveReport | None,
    collections: list[tuple[int, int]] | None,
    devices: list[ItsDevice] | None,
    table: str | None = None,
) -> ItsTableError:
    return ItsTableError(
        err, message, where=where, gpa=gpa, report=report, collections=collections, devices=devices, table=table
    )


# ----------------------------------------------------------------------------- structures
@dataclass(eq=False)
class ItsDevice:
    """One mapped device of the virtual ITS with its ITEs (one row per ITE).

    Attributes
    ----------
    device_id : int
        DeviceID.
    itt_addr : int
        GPA of the device's ITT (256-byte aligned, below 2^52).
    eventid_bits : int
        Number of EventID bits (MAPD ``Size + 1``; 1..16 from MAPD, up to 32 from a restored DTE).
    event_id, pintid, icid : numpy.ndarray
        ``uint32``, ``uint32``, ``uint16`` per ITE. Any order on input to
        :func:`save_tables_v0`; EventID scan order on output of :func:`restore_tables_v0`.
    hw : numpy.ndarray
        ``bool`` per ITE: the ITE's LPI is forwarded (a VLPI). Restore output: all False.
    """

    device_id: int
    itt_addr: int
    eventid_bits: int
    event_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    pintid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    icid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16))
    hw: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __repr__(self) -> str:
        ites = {"event_id": "ITEs", "pintid": "ITEs", "icid": "ITEs", "hw": "ITEs"}
        return fields_repr(self, ("device_id", "itt_addr", "eventid_bits", "event_id", "pintid", "icid", "hw"),
                           ites).replace(f"itt_addr={self.itt_addr!r}", f"itt_addr={self.itt_addr:#x}", 1)


@dataclass
class ItsSaveReport:
    """What one :func:`save_tables_v0` call wrote.

    ``ctes_written`` counts collection entries, not the terminator (``terminator_written``);
    ``bytes_written`` counts every 8-byte entry write, terminator included.
    ``dirty_pages`` are the sorted unique 4 KiB guest pages (GPA >> 12) written by this call.
    """

    dtes_written: int = 0
    ites_written: int = 0
    ctes_written: int = 0
    bytes_written: int = 0
    dirty_pages: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    terminator_written: bool = False

    def __repr__(self) -> str:
        return fields_repr(self, ("dtes_written", "ites_written", "ctes_written", "bytes_written", "dirty_pages",
                                  "terminator_written"), {"dirty_pages": "pages"})


# ------------------------------------------------------------------------ BASER decoding
def _check_u64(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be a 64-bit register value, got {value:#x}")
    return value


def baser_table(baser: int) -> tuple[int, int, bool]:
    """Decode a ``GITS_BASER<n>`` value the way KVM does (64 KiB pages).

    Parameters
    ----------
    baser : int
        Raw 64-bit register value.

    Returns
    -------
    (gpa, nbytes, indirect) : tuple[int, int, bool]
        Table GPA (``[47:16]`` = PA[47:16], ``[15:12]`` = PA[51:48]), table size in bytes
        (``(Size + 1) * 64 KiB``) and the ``Indirect`` bit. ``Valid`` (bit 63) is not part of the
        result.

    Examples
    --------
    >>> baser_table((1 << 63) | 0x4_0000_0000 | 0x3)
    (17179869184, 262144, False)
    """
    baser = _check_u64(baser, "baser")
    gpa = (baser & 0x0000_FFFF_FFFF_0000) | (((baser >> 12) & 0xF) << 48)
    return gpa, ((baser & 0xFF) + 1) * TABLE_PAGE, bool((baser >> 62) & 1)


def _valid(baser: int) -> bool:
    return bool(baser >> 63)


# --------------------------------------------------------------------- encode / decode
def _words(raw: npt.ArrayLike) -> np.ndarray:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(raw, dtype=np.uint8)
    arr = np.asarray(raw)
    if arr.dtype == np.uint8:
        if arr.size % ESZ:
            raise ValueError(f"raw: {arr.size} bytes is not a whole number of 8-byte entries")
        return np.frombuffer(np.ascontiguousarray(arr).tobytes(), dtype="<u8")
    if arr.dtype.kind not in "ui":
        raise TypeError(f"raw must be bytes, uint8 or uint64 entries, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and (arr < 0).any():
        raise ValueError(f"raw[{int(np.argmax(arr < 0))}] is negative")
    return arr.astype(np.uint64).reshape(-1)


def _field(words: np.ndarray, kind: str, name: str) -> np.ndarray:
    shift, width = FIELDS_V0[kind][name]
    return (words >> _U64(shift)) & _U64((1 << width) - 1)


def _as_field(value: npt.ArrayLike, kind: str, name: str) -> U64Array:
    arr = np.asarray(value)
    if arr.dtype == bool:
        arr = arr.astype(np.uint64)
    if arr.dtype.kind not in "ui":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    width = FIELDS_V0[kind][name][1] if name not in ("itt_addr", "l2_addr") else 52
    bad = (arr < 0) | (arr >= (1 << width)) if arr.dtype.kind == "i" else arr >= _U64(1 << width)
    if np.any(bad):
        i = int(np.argmax(np.reshape(bad, -1)))
        raise ValueError(f"{name}[{i}] = {int(np.reshape(arr, -1)[i])} does not fit the {kind.upper()} field")
    return arr.astype(np.uint64)


def _place(value: U64Array, kind: str, name: str) -> U64Array:
    shift, _ = FIELDS_V0[kind][name]
    return value << _U64(shift)


def encode_dte(  # noqa: A002 (ABI field name)
    next: npt.ArrayLike, itt_addr: npt.ArrayLike, size: npt.ArrayLike, valid: npt.ArrayLike = True
) -> U64Array:
    """DTE words (uint64) from fields; arrays broadcast.

    ``itt_addr`` is the ITT's byte GPA (256-byte aligned); ``size`` is EventID bits - 1.

    Examples
    --------
    >>> hex(int(encode_dte(5, 0x4008_0000, 7)[()]))
    '0x800a000008010007'
    """
    itt = _as_field(itt_addr, "dte", "itt_addr")
    if np.any(itt & _U64(0xFF)):
        i = int(np.argmax(np.reshape(itt & _U64(0xFF), -1) != 0))
        raise ValueError(f"itt_addr[{i}] is not 256-byte aligned")
    return (
        _place(_as_field(valid, "dte", "valid"), "dte", "valid")
        | _place(_as_field(next, "dte", "next"), "dte", "next")
        | _place(itt >> _U64(8), "dte", "itt_addr")
        | _place(_as_field(size, "dte", "size"), "dte", "size")
    )


def decode_dte(raw: npt.ArrayLike) -> np.ndarray:
    """Decode DTEs (bytes, uint8 or uint64 words) into a :data:`DTE_FIELDS` array."""
    w = _words(raw)
    out = np.empty(w.shape, DTE_FIELDS)
    out["valid"] = _field(w, "dte", "valid") != 0
    out["next"] = _field(w, "dte", "next")
    out["itt_addr"] = _field(w, "dte", "itt_addr") << _U64(8)
    out["size"] = _field(w, "dte", "size")
    return out


def encode_ite(next: npt.ArrayLike, pintid: npt.ArrayLike, icid: npt.ArrayLike) -> U64Array:  # noqa: A002
    """ITE words (uint64) from fields; arrays broadcast."""
    return (
        _place(_as_field(next, "ite", "next"), "ite", "next")
        | _place(_as_field(pintid, "ite", "pintid"), "ite", "pintid")
        | _place(_as_field(icid, "ite", "icid"), "ite", "icid")
    )


def decode_ite(raw: npt.ArrayLike) -> np.ndarray:
    """Decode ITEs into an :data:`ITE_FIELDS` array (``pintid == 0`` marks an invalid ITE)."""
    w = _words(raw)
    out = np.empty(w.shape, ITE_FIELDS)
    for name in ("next", "pintid", "icid"):
        out[name] = _field(w, "ite", name)
    return out


def encode_cte(rdbase: npt.ArrayLike, icid: npt.ArrayLike, valid: npt.ArrayLike = True) -> U64Array:
    """CTE words (uint64) from fields; ``rdbase`` is a vCPU id or :data:`COLLECTION_NOT_MAPPED`."""
    return (
        _place(_as_field(valid, "cte", "valid"), "cte", "valid")
        | _place(_as_field(rdbase, "cte", "rdbase"), "cte", "rdbase")
        | _place(_as_field(icid, "cte", "icid"), "cte", "icid")
    )


def decode_cte(raw: npt.ArrayLike) -> np.ndarray:
    """Decode CTEs into a :data:`CTE_FIELDS` array; ``rdbase`` is bits 47:16, as KVM reads it."""
    w = _words(raw)
    out = np.empty(w.shape, CTE_FIELDS)
    out["valid"] = _field(w, "cte", "valid") != 0
    out["rdbase"] = _field(w, "cte", "rdbase")
    out["icid"] = _field(w, "cte", "icid")
    return out


def encode_l1e(l2_addr: npt.ArrayLike, valid: npt.ArrayLike = True) -> U64Array:
    """Level-1 device-table entries from the L2 page GPA (64 KiB aligned)."""
    addr = _as_field(l2_addr, "l1e", "l2_addr")
    if np.any(addr & _U64(TABLE_PAGE - 1)):
        i = int(np.argmax(np.reshape(addr & _U64(TABLE_PAGE - 1), -1) != 0))
        raise ValueError(f"l2_addr[{i}] is not 64 KiB aligned")
    return _place(_as_field(valid, "l1e", "valid"), "l1e", "valid") | addr


def decode_l1e(raw: npt.ArrayLike) -> np.ndarray:
    """Decode level-1 device-table entries into an :data:`L1E_FIELDS` array."""
    w = _words(raw)
    out = np.empty(w.shape, L1E_FIELDS)
    out["valid"] = _field(w, "l1e", "valid") != 0
    out["l2_addr"] = w & _U64(_ADDR_51_16)
    return out


# ------------------------------------------------------------------- guest memory map
class _Map:
    """Mapped extents of a GuestMemory (adjacent slots merged), for the scalar questions the
    error messages need ("is this entry visible / readable?")."""

    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        starts, ends = mem.extents(writable=False)
        self._rd_starts: list[int] = starts.tolist()  # scalar lookups: bisect on lists beats numpy
        self._rd_ends: list[int] = ends.tolist()

    def visible(self, gpa: int) -> bool:
        """The byte at ``gpa`` is in a memslot (``kvm_is_visible_gfn`` at byte granularity)."""
        i = bisect.bisect_right(self._rd_starts, gpa) - 1
        return i >= 0 and gpa < self._rd_ends[i]

    def readable_entries(self, gpa: int, m: int) -> int:
        """How many consecutive 8-byte entries from ``gpa`` (at most ``m``) can be read."""
        i = bisect.bisect_right(self._rd_starts, gpa) - 1
        if i < 0 or gpa >= self._rd_ends[i]:
            return 0
        return min(m, (self._rd_ends[i] - gpa) // ESZ)


def _check_mem(mem: object) -> None:
    if not isinstance(mem, GuestMemory):
        raise TypeError(f"mem must be a vlpi.GuestMemory, got {type(mem).__name__}")


# -------------------------------------------------------------------------- check_id
def _check_id(
    gmap: _Map, baser: int, ident: int, device: bool, l1_cache: dict[int, int | None] | None = None
) -> tuple[bool, int, str]:
    """``vgic_its_check_id``: (ok, entry GPA, reason). Reads the L1 entry for a two-level
    device table from guest memory (a faulting read fails the check). ``l1_cache`` memoises
    L1 reads (index -> word or None) while guest memory does not change."""
    base, nbytes, indirect = baser_table(baser)
    if not device:
        indirect = False
    if device and ident > VITS_MAX_DEVID:
        return False, 0, f"DeviceID {ident} > {VITS_MAX_DEVID:#x}"
    if not device and ident >= 1 << 16:
        return False, 0, f"ICID {ident} >= 2^16"
    if not indirect:
        if ident >= nbytes // ESZ:
            return False, 0, f"ID {ident} is beyond the {nbytes // ESZ}-entry table"
        addr = base + ident * ESZ
        if not gmap.visible(addr):
            return False, addr, f"entry GPA {addr:#x} is in no memslot"
        return True, addr, ""
    index = ident // L2_ENTRIES
    if index >= nbytes // ESZ:
        return False, 0, f"L1 index {index} is beyond the {nbytes // ESZ}-entry level-1 table"
    l1_gpa = base + index * ESZ
    if l1_cache is not None and index in l1_cache:
        l1 = l1_cache[index]
    else:
        l1 = int(gmap.mem.read(l1_gpa, ESZ).view("<u8")[0]) if gmap.readable_entries(l1_gpa, 1) else None
        if l1_cache is not None:
            l1_cache[index] = l1
    if l1 is None:
        return False, l1_gpa, f"L1 entry {index} at GPA {l1_gpa:#x} cannot be read"
    if not l1 >> 63:
        return False, l1_gpa, f"L1 entry {index} at GPA {l1_gpa:#x} is not valid"
    addr = (l1 & _ADDR_51_16) + (ident % L2_ENTRIES) * ESZ
    if not gmap.visible(addr):
        return False, addr, f"DTE GPA {addr:#x} (via L1 entry {index}) is in no memslot"
    return True, addr, ""


# ---------------------------------------------------------------------------------- save
def _int_field(obj: object, name: str, where: str, lo: int, hi: int) -> int:
    v = getattr(obj, name)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{where}.{name} must be an integer, got {type(v).__name__}")
    v = int(v)
    if not lo <= v < hi:
        raise ValueError(f"{where}.{name} = {v:#x} is out of range [{lo:#x}, {hi:#x})")
    return v


def _ite_array(a: npt.ArrayLike, name: str, n: int | None) -> np.ndarray:
    """One per-ITE array of a device as int64 (range checks are done in bulk afterwards)."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if n is not None and arr.size != n:
        raise ValueError(f"{name} has {arr.size} entries, event_id has {n}")
    if arr.size and arr.dtype.kind not in "uib":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and arr.max() >= 1 << 63:
        i = int(np.argmax(arr >= np.uint64(1 << 63)))
        raise ValueError(f"{name}[{i}] = {int(arr[i])} is out of range")
    return arr  # converted to int64 by one concatenate per column


#: per column: (name, native dtype, exclusive upper bound of the value)
_ITE_COLUMNS = (
    ("event_id", np.uint32, 1 << 32), ("pintid", np.uint32, 1 << 32), ("icid", np.uint16, 1 << 16), ("hw", np.bool_, 2)
)


def _native_col(p: np.ndarray, dtype: npt.DTypeLike, hi: int, name: str, k: int) -> np.ndarray:
    """One device's per-ITE column in its native dtype, C-contiguous; values that do not fit
    are an error (booleans are not integers, anything non-zero is a True ``hw``)."""
    if p.dtype != dtype:
        flag = np.dtype(dtype) == np.bool_
        if p.dtype == np.bool_ and not flag:
            raise TypeError(f"devices[{k}].{name} must be integers, got dtype bool")
        if not flag and p.size:
            bad = (p < 0) | (p >= hi) if p.dtype.kind == "i" else p >= np.uint64(hi)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"devices[{k}].{name}[{i}] = {int(p[i])} is out of range [0, {hi:#x})")
        p = p.astype(dtype)
    return np.ascontiguousarray(p)


_BY_ADDRESS = 1 << 15  # devices with at least this many ITEs are passed in place, smaller ones
#                       copied into one buffer per column: taking an array's address costs
#                       ~10 us in Python, copying 32 Ki ITEs about as much (measured)


def _addrs(arrays: list[np.ndarray], keep: list[np.ndarray]) -> U64Array:
    """Addresses of per-device arrays for the kernel; small ones are packed into one buffer
    (appended to ``keep``, which must outlive the kernel call)."""
    n = len(arrays)
    out = np.zeros(n, np.uint64)
    if n == 0:
        return out
    sizes = np.fromiter((a.shape[0] for a in arrays), np.int64, n)
    small = np.flatnonzero(sizes < _BY_ADDRESS)
    if small.size:
        buf = np.concatenate([arrays[r] for r in small.tolist()])
        keep.append(buf)
        offs = np.zeros(small.size, np.int64)
        np.cumsum(sizes[small][:-1], out=offs[1:])
        out[small] = np.uint64(buf.__array_interface__["data"][0]) + (offs * buf.itemsize).astype(np.uint64)
    for r in np.flatnonzero(sizes >= _BY_ADDRESS).tolist():
        out[r] = arrays[r].__array_interface__["data"][0]
    return out


_U32, _U16, _BOOL = np.dtype(np.uint32), np.dtype(np.uint16), np.dtype(np.bool_)


def _native(d: ItsDevice) -> bool:
    """True when a device needs no conversion: int fields in range, C-contiguous 1-D arrays of
    one length in their native dtypes. Anything else takes the checking path (which also says
    what is wrong). Written for speed: it runs once per device on every save."""
    e, p, c, h = d.event_id, d.pintid, d.icid, d.hw
    if not (type(e) is np.ndarray and type(p) is np.ndarray and type(c) is np.ndarray and type(h) is np.ndarray):
        return False
    if not (e.dtype is _U32 and p.dtype is _U32 and c.dtype is _U16 and h.dtype is _BOOL):
        return False
    n = e.shape
    if len(n) != 1 or p.shape != n or c.shape != n or h.shape != n:
        return False
    if not (e.flags.c_contiguous and p.flags.c_contiguous and c.flags.c_contiguous and h.flags.c_contiguous):
        return False
    i, t, b = d.device_id, d.itt_addr, d.eventid_bits
    return (
        type(i) is int and type(t) is int and type(b) is int
        and 0 <= i < 1 << 32 and 0 <= t < 1 << 52 and not t & 0xFF and 1 <= b <= MAX_EVENTID_BITS
    )


class _SaveInput:
    """Validated save input: devices sorted by DeviceID, each with its ITEs in EventID order as
    native arrays (``event_id``/``pintid`` uint32, ``icid`` uint16, ``hw`` bool), handed to the
    kernel as per-device addresses (``ptrs``, see :func:`_addrs`) and counts (``cnt``)."""

    def __init__(self, devices: Sequence[ItsDevice], collections: Sequence[tuple[int, int]]) -> None:
        if isinstance(devices, ItsDevice) or not isinstance(devices, Sequence):
            raise TypeError("devices must be a sequence of ItsDevice")
        nd = len(devices)
        ids = np.empty(nd, np.int64)
        itt = np.empty(nd, np.int64)
        bits = np.empty(nd, np.uint8)
        E: list[np.ndarray] = []
        P: list[np.ndarray] = []
        C: list[np.ndarray] = []
        H: list[np.ndarray] = []
        for k, d in enumerate(devices):
            if not isinstance(d, ItsDevice):
                raise TypeError(f"devices[{k}] must be an ItsDevice, got {type(d).__name__}")
            if _native(d):  # the common case, checked without a per-field call
                ids[k], itt[k], bits[k] = d.device_id, d.itt_addr, d.eventid_bits
                E.append(d.event_id)
                P.append(d.pintid)
                C.append(d.icid)
                H.append(d.hw)
                continue
            w = f"devices[{k}]"
            ids[k] = _int_field(d, "device_id", w, 0, 1 << 32)
            itt[k] = _int_field(d, "itt_addr", w, 0, 1 << 52)
            if itt[k] & 0xFF:
                raise ValueError(f"{w}.itt_addr = {itt[k]:#x} is not 256-byte aligned")
            bits[k] = _int_field(d, "eventid_bits", w, 1, MAX_EVENTID_BITS + 1)
            eid = _ite_array(d.event_id, f"{w}.event_id", None)
            cols = (eid, _ite_array(d.pintid, f"{w}.pintid", eid.size), _ite_array(d.icid, f"{w}.icid", eid.size),
                    _ite_array(d.hw, f"{w}.hw", eid.size))
            for lst, col, (name, dt, hi) in zip((E, P, C, H), cols, _ITE_COLUMNS, strict=True):
                lst.append(_native_col(col, dt, hi, name, k))
        dorder = np.argsort(ids, kind="stable")  # list_sort: stable, a repeated DeviceID keeps its order
        sids = ids[dorder]
        order = dorder.tolist()
        E, P, C, H = ([x[k] for k in order] for x in (E, P, C, H))
        bits = bits[dorder]
        cnt = np.array([e.size for e in E], np.int64)
        out = np.zeros(3, np.int64)
        unsorted = np.zeros(nd, np.uint8)
        perms: dict[int, np.ndarray] = {}
        keep: list[np.ndarray] = []
        ptrs = [_addrs(x, keep) for x in (E, P, C, H)]
        _k.check_device_ites(ptrs[0], ptrs[1], cnt, bits, unsorted, out)
        if unsorted.any():  # devices listing their ITEs out of EventID order: sorted copies
            for r in np.flatnonzero(unsorted).tolist():
                perms[r] = pr = np.argsort(E[r], kind="stable")
                E[r], P[r], C[r], H[r] = E[r][pr], P[r][pr], C[r][pr], H[r][pr]
            unsorted[:] = 0
            keep = []
            ptrs = [_addrs(x, keep) for x in (E, P, C, H)]
            _k.check_device_ites(ptrs[0], ptrs[1], cnt, bits, unsorted, out)
        if out[0] >= 0:
            r, j = int(out[0]), int(out[1])
            k = order[r]
            local = int(perms[r][j]) if r in perms else j
            if out[2] == 1:
                raise ValueError(f"devices[{k}].event_id[{local}] = {int(E[r][j])} is not below 2^eventid_bits")
            if out[2] == 2:
                raise ValueError(f"devices[{k}].pintid[{local}] = {int(P[r][j])} is not an LPI INTID (>= {MIN_LPI})")
            raise ValueError(f"devices[{k}].event_id has EventID {int(E[r][j])} twice")
        self.ids, self.itt, self.bits, self.cnt = sids, itt[dorder], bits, cnt
        self.keep = (E, P, C, H, keep)  # what the addresses point into
        self.ptrs = (ptrs[0], ptrs[1], ptrs[2], ptrs[3])  # event_id, pintid, icid, hw

        if isinstance(collections, (str, bytes)) or not isinstance(collections, Sequence):
            raise TypeError("collections must be a sequence of (icid, rdbase) pairs")
        cicid = np.empty(len(collections), np.int64)
        crd = np.empty(len(collections), np.int64)
        for i, c in enumerate(collections):
            try:
                icid_i, rd_i = c
            except (TypeError, ValueError):
                raise TypeError(f"collections[{i}] must be an (icid, rdbase) pair") from None
            for name, v, hi in (("icid", icid_i, 1 << 16), ("rdbase", rd_i, 1 << 32)):
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                    raise TypeError(f"collections[{i}] {name} must be an integer")
                if not 0 <= int(v) < hi:
                    raise ValueError(f"collections[{i}] {name} = {int(v):#x} is out of range [0, {hi:#x})")
            cicid[i], crd[i] = int(icid_i), int(rd_i)
        if cicid.size > 1:
            _, firsts = np.unique(cicid, return_index=True)
            if firsts.size != cicid.size:
                dup = np.setdiff1d(np.arange(cicid.size), firsts)[0]
                raise ValueError(f"collections[{dup}] repeats ICID {int(cicid[dup])}")
        self.cte_val = _U64(1 << 63) | (crd.astype(np.uint64) << _U64(16)) | cicid.astype(np.uint64)


class _Slots:
    """The slot table of a GuestMemory as the table kernels take it (the slots' arrays are kept
    alive by ``self.slots`` for the duration of a call)."""

    def __init__(self, mem: GuestMemory) -> None:
        self.slots = mem.slots
        sl = self.slots
        self.start = np.array([s.gpa for s in sl], np.uint64)
        self.end = np.array([s.end for s in sl], np.uint64)
        self.ptr = np.array([s.data.ctypes.data for s in sl], np.uint64)
        self.ro = np.array([s.readonly for s in sl], np.uint8)
        self.dirty = np.array([s.dirty.ctypes.data for s in sl], np.uint64)
        self.dirty_n = np.array([s.dirty.size for s in sl], np.int64)
        self.page0 = np.array([s.page0 for s in sl], np.int64)


def _table(baser: int) -> tuple[bool, int, int, bool]:
    base, nbytes, indirect = baser_table(baser)
    return _valid(baser), base, nbytes // ESZ, indirect


def save_tables_v0(
    mem: GuestMemory,
    baser0: int,
    baser1: int,
    devices: Sequence[ItsDevice],
    collections: Sequence[tuple[int, int]],
    *,
    has_gicv4_1: bool,
) -> ItsSaveReport:
    """``KVM_DEV_ARM_ITS_SAVE_TABLES`` with ABI revision 0 (``vgic_its_save_tables_v0``).

    Parameters
    ----------
    mem : GuestMemory
        Guest RAM holding the tables; written in place and dirty-logged.
    baser0, baser1 : int
        ``GITS_BASER0`` (device table, may be two-level) and ``GITS_BASER1`` (collection
        table). A table whose ``Valid`` bit is 0 is skipped.
    devices : sequence of ItsDevice
        The mapped devices in KVM's list order (saved in DeviceID order by a stable sort, ITEs
        in EventID order). A DeviceID may appear twice, as in KVM's list after a restore onto
        an ITS that was not reset: both are saved, in list order. Arrays already in their
        native dtypes (``uint32``, ``uint32``, ``uint16``, ``bool``) and in EventID order are
        taken as they are (the fast path).
    collections : sequence of (icid, rdbase)
        Collections in creation (list) order; ``rdbase`` is a vCPU id or
        :data:`COLLECTION_NOT_MAPPED`.
    has_gicv4_1 : bool
        Without GICv4.1 a forwarded (``hw``) ITE makes the save fail with ``EACCES``.

    Returns
    -------
    ItsSaveReport

    Raises
    ------
    ItsTableError
        ``EINVAL`` (a DeviceID fails ``vgic_its_check_id``), ``EACCES`` or ``EFAULT``. Writes
        issued before the error stay in guest memory; ``.report`` counts them.
    TypeError, ValueError
        Bad arguments (duplicate EventIDs in a device or ICIDs, misaligned ITT, pINTID < 8192,
        EventID >= 2^eventid_bits, ...). Nothing is written.

    Notes
    -----
    The ITE of EventID ``e`` is written at ``itt_addr + (8 * e mod 2^32)``, as the kernel
    computes it in 32 bits (this matters only for ITTs of more than 2^29 events, which only a
    restored DTE can declare).

    Examples
    --------
    kvm-unit-tests ``its_setup1``: devices 2 and 7 (8 EventID bits), LPI 8195 on device 2 /
    event 20 in collection 3 (vCPU 3), LPI 8196 on device 7 / event 255 in collection 2.

    >>> mem = GuestMemory()
    >>> _ = mem.add_slot(0x4000_0000, 1 << 21)
    >>> dt = (1 << 63) | 0x4000_0000            # flat device table, 64 KiB
    >>> ct = (1 << 63) | 0x4001_0000            # collection table, 64 KiB
    >>> u32, u16 = np.uint32, np.uint16
    >>> devs = [ItsDevice(2, 0x4010_0000, 8, np.array([20], u32), np.array([8195], u32),
    ...                   np.array([3], u16), np.array([False])),
    ...         ItsDevice(7, 0x4010_1000, 8, np.array([255], u32), np.array([8196], u32),
    ...                   np.array([2], u16), np.array([False]))]
    >>> rep = save_tables_v0(mem, dt, ct, devs, [(3, 3), (2, 2)], has_gicv4_1=False)
    >>> rep.dtes_written, rep.ites_written, rep.ctes_written, rep.terminator_written
    (2, 2, 2, True)
    >>> hex(int(mem.read(0x4000_0000 + 2 * 8, 8).view("<u8")[0]))   # DTE 2: next 5
    '0x800a000008020007'
    >>> cols, restored = restore_tables_v0(mem, dt, ct, n_vcpus=4)
    >>> cols, [(d.device_id, d.event_id.tolist(), d.pintid.tolist()) for d in restored]
    ([(3, 3), (2, 2)], [(2, [20], [8195]), (7, [255], [8196])])
    """
    _check_mem(mem)
    baser0 = _check_u64(baser0, "baser0")
    baser1 = _check_u64(baser1, "baser1")
    if not isinstance(has_gicv4_1, (bool, np.bool_)):
        raise TypeError(f"has_gicv4_1 must be a bool, got {type(has_gicv4_1).__name__}")
    inp = _SaveInput(devices, collections)
    sl = _Slots(mem)
    dt_valid, dt_base, dt_entries, indirect = _table(baser0)
    ct_valid, ct_base, ct_entries, _ = _table(baser1)
    counts = np.zeros(5, np.int64)
    info = np.zeros(8, np.int64)
    pages, npg = _k.save_walk(
        sl.start, sl.end, sl.ptr, sl.ro, sl.dirty, sl.dirty_n, sl.page0,
        dt_valid, np.int64(dt_base), np.int64(dt_entries), indirect,
        inp.ids.astype(np.uint32), inp.itt, inp.bits, inp.cnt, *inp.ptrs,
        bool(has_gicv4_1), ct_valid, np.int64(ct_base), np.int64(ct_entries), inp.cte_val, counts, info,
    )
    rep = ItsSaveReport(
        dtes_written=int(counts[0]), ites_written=int(counts[1]), ctes_written=int(counts[2]),
        bytes_written=int(counts[3]), dirty_pages=np.unique(pages[:npg]), terminator_written=bool(counts[4]),
    )
    if info[0]:
        raise _save_error(info, rep, mem, baser0)
    return rep


def _save_error(info: np.ndarray, rep: ItsSaveReport, mem: GuestMemory, baser0: int) -> ItsTableError:
    err, reason, gpa, a, b, c = (int(x) for x in info[:6])

    def fail(message: str, where: str, at: int | None, write_fault: bool = False) -> ItsTableError:
        e = ItsTableError(err, f"{message} ({where})", where=where, gpa=at, report=rep)
        if write_fault:
            e.__cause__ = GuestMemoryFault(gpa, write=True)
        return e

    if reason == _k.S_DEV_ID:
        _, at, why = _check_id(_Map(mem), baser0, a, True)  # same memory as the kernel saw
        return fail(f"DeviceID {a} fails the device-table check: {why}", f"device table: DeviceID {a}", at or None)
    if reason in (_k.S_ITE_HW, _k.S_ITE_FAULT):
        where = f"ITT of DeviceID {a}: EventID {b} (ITE GPA {gpa:#x}, pINTID {c})"
        if reason == _k.S_ITE_HW:
            return fail("forwarded LPI: its pending state is not available without GICv4.1", where, gpa)
        return fail("guest memory fault writing an ITE", where, gpa, True)
    if reason == _k.S_DTE_FAULT:
        return fail("guest memory fault writing a DTE", f"device table: DTE of DeviceID {a} at GPA {gpa:#x}", gpa, True)
    what = f"collection table: CTE {a}" if reason == _k.S_CTE_FAULT else "collection table: terminator"
    return fail("guest memory fault writing the collection table", f"{what} at GPA {gpa:#x}", gpa, True)


# ------------------------------------------------------------------------------- restore
_RESTORED_ITE_BYTES = 32  # output bytes per restored ITE at the worst point of the doubling growth


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 16 GiB
        return 16 << 30


_RESTORE_MESSAGES = {
    _k.R_CTE_RDBASE: "RDBase is not a vCPU id",
    _k.R_CTE_EXISTS: "collection already exists",
    _k.R_CTE_ICID: "ICID fails the collection-table check",
    _k.R_CTE_FAULT: "guest memory fault reading the collection table",
    _k.R_DTE_ID: "DeviceID fails the device-table check",
    _k.R_DTE_FAULT: "guest memory fault reading the device table",
    _k.R_L1_FAULT: "guest memory fault reading the level-1 device table",
    _k.R_ITE_PINTID: f"pINTID below {MIN_LPI}",
    _k.R_ITE_NEXT: "EventID + next is not below 2^EventID bits",
    _k.R_ITE_COLL: "the ITE's collection does not exist",
    _k.R_ITE_EVENT: "EventID is not below 2^EventID bits",
    _k.R_ITE_GPA: "the ITE's GPA is in no memslot",
    _k.R_ITE_FAULT: "guest memory fault reading an ITT",
    _k.R_TOO_MANY: "the tables name more ITEs than memory can hold (max_ites)",
}


def restore_tables_v0(
    mem: GuestMemory,
    baser0: int,
    baser1: int,
    *,
    n_vcpus: int,
    existing_collections: Sequence[int] = (),
    max_ites: int | None = None,
) -> tuple[list[tuple[int, int]], list[ItsDevice]]:
    """``KVM_DEV_ARM_ITS_RESTORE_TABLES`` with ABI revision 0 (``vgic_its_restore_tables_v0``).

    Parameters
    ----------
    mem : GuestMemory
        Guest RAM holding the tables (only read).
    baser0, baser1 : int
        ``GITS_BASER0`` (device table) and ``GITS_BASER1`` (collection table); a table whose
        ``Valid`` bit is 0 is skipped.
    n_vcpus : int
        vCPU ids are ``0 .. n_vcpus - 1``; a CTE's RDBase must be one of them or
        :data:`COLLECTION_NOT_MAPPED`.
    existing_collections : sequence of int, optional
        ICIDs the ITS already has (``RESTORE_TABLES`` without a reset): restoring one of them
        again is ``EEXIST``, and restored ITEs may refer to them.
    max_ites : int, optional
        Refuse (``ENOMEM``) tables that name more ITEs than this (the walk stops there). Default:
        as many as a quarter of the machine's physical memory holds at 32 bytes each (the walk's
        worst case; the ITS and the LPIs built from the result need about as much again).

    Returns
    -------
    collections : list of (icid, rdbase)
        Restored collections in table order.
    devices : list of ItsDevice
        Restored devices in DeviceID scan order, each with its ITEs in EventID scan order
        (``hw`` all False). This is the order in which KVM creates the LPIs. A DeviceID may
        appear twice (a two-level table whose level-1 index wraps the 32-bit DeviceID):
        the kernel does not check either.

    Raises
    ------
    ItsTableError
        ``EINVAL``, ``EEXIST``, ``EFAULT`` or ``ENOMEM``; ``.collections``/``.devices`` hold
        what the walk restored before the error, in walk order (the failing device included,
        with the ITEs before the failing one). KVM creates the LPI of each of those ITEs
        (consuming its pending bit) before it reads the next entry.
    TypeError, ValueError
        Bad arguments.
    """
    _check_mem(mem)
    baser0 = _check_u64(baser0, "baser0")
    baser1 = _check_u64(baser1, "baser1")
    if isinstance(n_vcpus, (bool, np.bool_)) or not isinstance(n_vcpus, (int, np.integer)):
        raise TypeError(f"n_vcpus must be an integer, got {type(n_vcpus).__name__}")
    if not 0 <= int(n_vcpus) < COLLECTION_NOT_MAPPED:
        raise ValueError(f"n_vcpus must be >= 0, got {n_vcpus}")
    exists = np.zeros(1 << 16, np.uint8)
    for i, c in enumerate(existing_collections):
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < 1 << 16:
            raise ValueError(f"existing_collections[{i}] must be an ICID in [0, 65536), got {c!r}")
        exists[int(c)] = 1
    if max_ites is None:
        max_ites = _physical_memory() // (4 * _RESTORED_ITE_BYTES)
    elif isinstance(max_ites, (bool, np.bool_)) or not isinstance(max_ites, (int, np.integer)) or max_ites < 0:
        raise ValueError(f"max_ites must be a non-negative integer, got {max_ites!r}")
    sl = _Slots(mem)
    dt_valid, dt_base, dt_entries, indirect = _table(baser0)
    ct_valid, ct_base, ct_entries, _ = _table(baser1)
    info = np.zeros(8, np.int64)
    (c_icid, c_rd, nc, d_id, d_itt, d_bits, d_first, nd, i_eid, i_pint, i_icid, ni) = _k.restore_walk(
        sl.start, sl.end, sl.ptr, dt_valid, np.int64(dt_base), np.int64(dt_entries), indirect,
        ct_valid, np.int64(ct_base), np.int64(ct_entries), np.int64(n_vcpus), exists, np.int64(max_ites), info,
    )
    colls = list(zip(c_icid[:nc].tolist(), c_rd[:nc].tolist(), strict=True))
    hw = np.zeros(ni, bool)
    ids, itts, bits, first = d_id[:nd].tolist(), d_itt[:nd].tolist(), d_bits[:nd].tolist(), d_first[: nd + 1].tolist()
    devs = [
        ItsDevice(ids[k], itts[k], bits[k], i_eid[first[k] : first[k + 1]], i_pint[first[k] : first[k + 1]],
                  i_icid[first[k] : first[k + 1]], hw[first[k] : first[k + 1]])
        for k in range(nd)
    ]
    if info[0]:
        raise _restore_error(info, colls, devs, int(n_vcpus), int(max_ites))
    return colls, devs


def _restore_error(
    info: np.ndarray, colls: list[tuple[int, int]], devs: list[ItsDevice], n_vcpus: int, max_ites: int
) -> ItsTableError:
    err, reason, gpa, a, b, c, d = (int(x) for x in info[:7])
    msg = _RESTORE_MESSAGES[reason]
    if reason in (_k.R_CTE_RDBASE, _k.R_CTE_EXISTS, _k.R_CTE_ICID):
        where = f"collection table: CTE {a} at GPA {gpa:#x} (ICID {b}, RDBase {c:#x})"
        if reason == _k.R_CTE_RDBASE:
            msg += f" (n_vcpus = {n_vcpus})"
    elif reason == _k.R_CTE_FAULT:
        where = f"collection table: CTE {a} at GPA {gpa:#x}"
    elif reason in (_k.R_DTE_ID, _k.R_DTE_FAULT):
        where = f"device table: DTE of DeviceID {a} at GPA {gpa:#x}"
    elif reason == _k.R_L1_FAULT:
        where = f"device table: L1 entry {a} at GPA {gpa:#x}"
    elif reason == _k.R_TOO_MANY:
        where = f"ITT of DeviceID {a}: EventID {b} at GPA {gpa:#x}"
        msg += f": more than {max_ites} ITEs"
    elif reason == _k.R_ITE_FAULT:
        where = f"ITT of DeviceID {a}: EventID {b} at GPA {gpa:#x}"
    else:
        entry = f"pINTID {c}, ICID {d & 0xFFFF}, next {d >> 48 & 0xFFFF}"
        where = f"ITT of DeviceID {a}: EventID {b} at GPA {gpa:#x} ({entry})"
    table = "collection" if reason in (_k.R_CTE_RDBASE, _k.R_CTE_EXISTS, _k.R_CTE_ICID, _k.R_CTE_FAULT) else "device"
    return ItsTableError(err, f"{msg} ({where})", where=where, gpa=gpa, collections=colls, devices=devs, table=table)
