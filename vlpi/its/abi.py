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
2^16 - 1 (ITE). DTEs are indexed by DeviceID, ITEs by EventID at ``ITT_addr + 8 * EventID``;
CTEs are packed from the collection table's base in collection-list (creation) order.

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

Writes go through :class:`GuestMemory` (``write`` per contiguous run of entries, or one
vectorised ``write_u8`` when there are many scattered runs; both dirty-logged), reads through
:meth:`GuestMemory.read`. Bulk work is vectorised: the whole save is planned with numpy (every
entry's address, value and first failure), tables are read in chunks and viewed as ``<u8``
words; small ITTs are walked in plain Python, which is faster there. The result is exactly that
of the entry-by-entry kernel loops (see ``tests/its_table_walker.py``, the scalar reference).

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
* Save fails with ``EINVAL`` on a device whose DeviceID fails ``vgic_its_check_id`` (the tree
  the spec was read from). A 2026 selftest says newer kernels skip such devices instead
  (kernel-semantics.md §4.3, UNVERIFIED); that variant is not modelled.
* Restore only reads. KVM interleaves ``vgic_add_lpi`` (which clears pending bits in guest RAM)
  with the table scan; the caller replays those clears afterwards, in the returned order. The
  two differ only if a pending table overlaps an ITS table that is still to be scanned.
"""

from __future__ import annotations

import bisect
import errno as _errno
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vlpi.errors import GuestMemoryFault
from vlpi.memory import PAGE_SHIFT, GuestMemory

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
        Restore only: what had been restored before the error, in restore order (the failing
        device is included with the ITEs restored before the failure). KVM frees all of it
        (and any pre-existing devices and collections), but ``vgic_add_lpi`` already ran for
        every listed ITE, so their pending bits were already consumed.
    """

    def __init__(
        self,
        err: int,
        message: str,
        *,
        where: str = "",
        gpa: int | None = None,
        report: ItsSaveReport | None = None,
        collections: list | None = None,
        devices: list | None = None,
    ) -> None:
        super().__init__(err, message)
        self.where = where
        self.gpa = gpa
        self.report = report
        self.collections = collections
        self.devices = devices

    def __reduce__(self):
        return (
            _rebuild_error,
            (self.errno, self.strerror, self.where, self.gpa, self.report, self.collections, self.devices),
        )


def _rebuild_error(err, message, where, gpa, report, collections, devices):
    return ItsTableError(err, message, where=where, gpa=gpa, report=report, collections=collections, devices=devices)


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
        return (
            f"ItsDevice(device_id={self.device_id}, itt_addr={self.itt_addr:#x}, "
            f"eventid_bits={self.eventid_bits}, ites={len(self.event_id)})"
        )


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


# ------------------------------------------------------------------------ BASER decoding
def _check_u64(value, name: str) -> int:
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
def _words(raw) -> np.ndarray:
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


def _as_field(value, kind: str, name: str) -> np.ndarray:
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


def _place(value: np.ndarray, kind: str, name: str) -> np.ndarray:
    shift, _ = FIELDS_V0[kind][name]
    return value << _U64(shift)


def encode_dte(next, itt_addr, size, valid=True) -> np.ndarray:  # noqa: A002 (ABI field name)
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


def decode_dte(raw) -> np.ndarray:
    """Decode DTEs (bytes, uint8 or uint64 words) into a :data:`DTE_FIELDS` array."""
    w = _words(raw)
    out = np.empty(w.shape, DTE_FIELDS)
    out["valid"] = _field(w, "dte", "valid") != 0
    out["next"] = _field(w, "dte", "next")
    out["itt_addr"] = _field(w, "dte", "itt_addr") << _U64(8)
    out["size"] = _field(w, "dte", "size")
    return out


def encode_ite(next, pintid, icid) -> np.ndarray:  # noqa: A002
    """ITE words (uint64) from fields; arrays broadcast."""
    return (
        _place(_as_field(next, "ite", "next"), "ite", "next")
        | _place(_as_field(pintid, "ite", "pintid"), "ite", "pintid")
        | _place(_as_field(icid, "ite", "icid"), "ite", "icid")
    )


def decode_ite(raw) -> np.ndarray:
    """Decode ITEs into an :data:`ITE_FIELDS` array (``pintid == 0`` marks an invalid ITE)."""
    w = _words(raw)
    out = np.empty(w.shape, ITE_FIELDS)
    for name in ("next", "pintid", "icid"):
        out[name] = _field(w, "ite", name)
    return out


def encode_cte(rdbase, icid, valid=True) -> np.ndarray:
    """CTE words (uint64) from fields; ``rdbase`` is a vCPU id or :data:`COLLECTION_NOT_MAPPED`."""
    return (
        _place(_as_field(valid, "cte", "valid"), "cte", "valid")
        | _place(_as_field(rdbase, "cte", "rdbase"), "cte", "rdbase")
        | _place(_as_field(icid, "cte", "icid"), "cte", "icid")
    )


def decode_cte(raw) -> np.ndarray:
    """Decode CTEs into a :data:`CTE_FIELDS` array; ``rdbase`` is bits 47:16, as KVM reads it."""
    w = _words(raw)
    out = np.empty(w.shape, CTE_FIELDS)
    out["valid"] = _field(w, "cte", "valid") != 0
    out["rdbase"] = _field(w, "cte", "rdbase")
    out["icid"] = _field(w, "cte", "icid")
    return out


def encode_l1e(l2_addr, valid=True) -> np.ndarray:
    """Level-1 device-table entries from the L2 page GPA (64 KiB aligned)."""
    addr = _as_field(l2_addr, "l1e", "l2_addr")
    if np.any(addr & _U64(TABLE_PAGE - 1)):
        i = int(np.argmax(np.reshape(addr & _U64(TABLE_PAGE - 1), -1) != 0))
        raise ValueError(f"l2_addr[{i}] is not 64 KiB aligned")
    return _place(_as_field(valid, "l1e", "valid"), "l1e", "valid") | addr


def decode_l1e(raw) -> np.ndarray:
    """Decode level-1 device-table entries into an :data:`L1E_FIELDS` array."""
    w = _words(raw)
    out = np.empty(w.shape, L1E_FIELDS)
    out["valid"] = _field(w, "l1e", "valid") != 0
    out["l2_addr"] = w & _U64(_ADDR_51_16)
    return out


# ------------------------------------------------------------------- guest memory map
class _Map:
    """Mapped and writable extents of a GuestMemory (adjacent slots merged), for vectorised
    "is this 8-byte entry readable / writable / visible" questions."""

    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        self.rd = mem.extents(writable=False)
        self.wr = mem.extents(writable=True)
        self._rd_starts = self.rd[0].tolist()  # scalar lookups: bisect on lists beats numpy
        self._rd_ends = self.rd[1].tolist()

    @staticmethod
    def _inside(ext, lo: np.ndarray, n: int) -> np.ndarray:
        st, en = ext
        lo = np.asarray(lo, dtype=np.uint64)
        if st.size == 0:
            return np.zeros(lo.shape, bool)
        i = np.searchsorted(st, lo, side="right") - 1
        ok = i >= 0
        ic = np.where(ok, i, 0)
        return ok & (lo + _U64(n) <= en[ic])

    def visible(self, gpa) -> np.ndarray:
        return self._inside(self.rd, gpa, 1)

    def writable(self, gpa) -> np.ndarray:
        return self._inside(self.wr, gpa, ESZ)

    def readable_entries(self, gpa: int, m: int) -> int:
        """How many consecutive 8-byte entries from ``gpa`` (at most ``m``) can be read."""
        i = bisect.bisect_right(self._rd_starts, gpa) - 1
        if i < 0 or gpa >= self._rd_ends[i]:
            return 0
        return min(m, (self._rd_ends[i] - gpa) // ESZ)

    def visible1(self, gpa: int) -> bool:
        """Scalar :meth:`visible`."""
        i = bisect.bisect_right(self._rd_starts, gpa) - 1
        return i >= 0 and gpa < self._rd_ends[i]

    def read_words(self, gpa: int, m: int) -> tuple[np.ndarray, int]:
        """Read up to ``m`` entries; returns (words, n) with n < m when entry n would fault."""
        n = self.readable_entries(gpa, m)
        if n == 0:
            return np.zeros(0, np.uint64), 0
        return self.mem.read(gpa, n * ESZ).view("<u8"), n


def _check_mem(mem) -> None:
    if not isinstance(mem, GuestMemory):
        raise TypeError(f"mem must be a vlpi.GuestMemory, got {type(mem).__name__}")


# -------------------------------------------------------------------------- check_id
def _check_id(gmap: _Map, baser: int, ident: int, device: bool, l1_cache: dict | None = None) -> tuple[bool, int, str]:
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


def _check_ids(gmap: _Map, baser: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``vgic_its_check_id`` for DeviceIDs: (ok, DTE GPA) per id."""
    base, nbytes, indirect = baser_table(baser)
    ids = np.asarray(ids, np.int64)
    ok = ids <= VITS_MAX_DEVID
    addr = np.zeros(ids.size, np.int64)
    if not indirect:
        ok &= ids < nbytes // ESZ
        addr[ok] = base + ids[ok] * ESZ
    else:
        index = ids // L2_ENTRIES
        ok &= index < nbytes // ESZ
        for i in np.unique(index[ok]).tolist():  # at most 8 L1 entries (DeviceID <= 0xffff)
            sel = ok & (index == i)
            l1_gpa = base + i * ESZ
            if gmap.readable_entries(l1_gpa, 1) == 0:
                ok &= ~sel
                continue
            l1 = int(gmap.mem.read(l1_gpa, ESZ).view("<u8")[0])
            if not l1 >> 63:
                ok &= ~sel
                continue
            addr[sel] = (l1 & _ADDR_51_16) + (ids[sel] % L2_ENTRIES) * ESZ
    ok[ok] &= gmap.visible(addr[ok].astype(np.uint64))
    return ok, addr


# ---------------------------------------------------------------------------------- save
def _int_field(obj, name: str, where: str, lo: int, hi: int) -> int:
    v = getattr(obj, name)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{where}.{name} must be an integer, got {type(v).__name__}")
    v = int(v)
    if not lo <= v < hi:
        raise ValueError(f"{where}.{name} = {v:#x} is out of range [{lo:#x}, {hi:#x})")
    return v


def _ite_array(a, name: str, n: int | None) -> np.ndarray:
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


class _SaveInput:
    """Validated, sorted save input: devices by DeviceID, ITEs by (device rank, EventID)."""

    def __init__(self, devices, collections) -> None:
        if isinstance(devices, ItsDevice) or not isinstance(devices, Sequence):
            raise TypeError("devices must be a sequence of ItsDevice")
        nd = len(devices)
        ids = np.empty(nd, np.int64)
        itt = np.empty(nd, np.int64)
        bits = np.empty(nd, np.int64)
        cols: list[list[np.ndarray]] = [[], [], [], []]
        for k, d in enumerate(devices):
            w = f"devices[{k}]"
            if not isinstance(d, ItsDevice):
                raise TypeError(f"{w} must be an ItsDevice, got {type(d).__name__}")
            ids[k] = _int_field(d, "device_id", w, 0, 1 << 32)
            itt[k] = _int_field(d, "itt_addr", w, 0, 1 << 52)
            if itt[k] & 0xFF:
                raise ValueError(f"{w}.itt_addr = {itt[k]:#x} is not 256-byte aligned")
            bits[k] = _int_field(d, "eventid_bits", w, 1, MAX_EVENTID_BITS + 1)
            eid = _ite_array(d.event_id, f"{w}.event_id", None)
            cols[0].append(eid)
            cols[1].append(_ite_array(d.pintid, f"{w}.pintid", eid.size))
            cols[2].append(_ite_array(d.icid, f"{w}.icid", eid.size))
            cols[3].append(_ite_array(d.hw, f"{w}.hw", eid.size))
        counts = np.array([c.size for c in cols[0]], np.int64)
        first = np.concatenate([[0], np.cumsum(counts)])
        rank0 = np.repeat(np.arange(nd), counts)  # caller's device index per ITE
        eid, pint, icid, hw = (
            np.concatenate(c, dtype=np.int64, casting="unsafe") if nd else np.zeros(0, np.int64) for c in cols
        )

        def bad(mask: np.ndarray, name: str, what: str) -> None:
            if mask.any():
                i = int(np.argmax(mask))
                k = int(rank0[i])
                value = {"event_id": eid, "pintid": pint, "icid": icid}[name][i]
                raise ValueError(f"devices[{k}].{name}[{i - int(first[k])}] = {int(value)} {what}")

        bad((eid < 0) | (eid >= (np.int64(1) << bits[rank0])), "event_id", "is not below 2^eventid_bits")
        bad((pint < MIN_LPI) | (pint >= 1 << 32), "pintid", f"is not an LPI INTID ({MIN_LPI} .. 2^32 - 1)")
        bad((icid < 0) | (icid >= 1 << 16), "icid", "is not a 16-bit ICID")

        dorder = np.argsort(ids, kind="stable")
        sids = ids[dorder]
        if nd > 1 and (sids[1:] == sids[:-1]).any():
            j = int(np.argmax(sids[1:] == sids[:-1]))
            raise ValueError(f"devices[{int(dorder[j + 1])}] repeats DeviceID {int(sids[j])}")
        rank_of = np.empty(nd, np.int64)
        rank_of[dorder] = np.arange(nd)
        order = np.lexsort((eid, rank_of[rank0]))  # by (DeviceID rank, EventID)
        se, sr = eid[order], rank_of[rank0][order]
        dup = (se[1:] == se[:-1]) & (sr[1:] == sr[:-1])
        if dup.any():
            j = int(np.argmax(dup))
            k = int(dorder[sr[j]])
            raise ValueError(f"devices[{k}].event_id has EventID {int(se[j])} twice")

        self.ids, self.itt, self.bits = sids, itt[dorder], bits[dorder]
        self.counts = counts[dorder]
        self.eid = se
        self.pintid = pint[order].astype(np.uint64)
        self.icid = icid[order].astype(np.uint64)
        self.hw = hw[order] != 0
        self.rank = np.repeat(np.arange(nd), self.counts)
        # DTE next: delta to the following device in the sorted list, capped; 0 for the last.
        dnext = np.zeros(nd, np.int64)
        if nd > 1:
            dnext[:-1] = np.minimum(np.diff(sids), DTE_NEXT_MAX)
        self.dte_val = (
            _U64(1 << 63)
            | (dnext.astype(np.uint64) << _U64(49))
            | ((self.itt.astype(np.uint64) >> _U64(8)) << _U64(5))
            | (self.bits - 1).astype(np.uint64)
        )
        # ITE next: EventID delta within the device, capped; 0 for the last ITE of a device.
        m = self.eid.size
        inext = np.zeros(m, np.int64)
        if m > 1:
            same = self.rank[1:] == self.rank[:-1]
            inext[:-1] = np.where(same, np.minimum(np.diff(self.eid), ITE_NEXT_MAX), 0)
        self.ite_val = (inext.astype(np.uint64) << _U64(48)) | (self.pintid << _U64(16)) | self.icid
        self.ite_addr = self.itt[self.rank] + self.eid * ESZ if m else np.zeros(0, np.int64)
        self.first_ite = np.concatenate([[0], np.cumsum(self.counts)])

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
            _, first = np.unique(cicid, return_index=True)
            if first.size != cicid.size:
                dup = np.setdiff1d(np.arange(cicid.size), first)[0]
                raise ValueError(f"collections[{dup}] repeats ICID {int(cicid[dup])}")
        self.cte_val = _U64(1 << 63) | (crd.astype(np.uint64) << _U64(16)) | cicid.astype(np.uint64)


# op kinds in the save sequence
_CHECK, _ITE, _DTE, _CTE, _TERM = 0, 1, 2, 3, 4


def _device_ops(inp: _SaveInput, ranks: np.ndarray, dte_addr: np.ndarray):
    """The save sequence of the given device ranks: per device [check, ITE..., DTE].
    Returns (kind, rank, ite_index, addr, value) arrays."""
    counts = inp.counts[ranks]
    sizes = counts + 2
    total = int(sizes.sum())
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    rank = np.repeat(ranks, sizes)
    local = np.arange(total, dtype=np.int64) - np.repeat(start, sizes)
    kind = np.where(local == 0, _CHECK, np.where(local == np.repeat(sizes - 1, sizes), _DTE, _ITE))
    ite_index = np.where(kind == _ITE, inp.first_ite[rank] + local - 1, -1)
    addr = np.zeros(total, np.int64)
    value = np.zeros(total, np.uint64)
    ii = kind == _ITE
    addr[ii] = inp.ite_addr[ite_index[ii]]
    value[ii] = inp.ite_val[ite_index[ii]]
    dd = kind == _DTE
    addr[dd] = np.repeat(dte_addr, sizes)[dd]
    value[dd] = inp.dte_val[rank[dd]]
    return kind, rank, ite_index, addr, value


_MANY_RUNS = 32  # above this many separate runs, GuestMemory.write_u8 beats one write() per run


class _SaveState:
    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        self.report = ItsSaveReport()
        self.pages: list[np.ndarray] = []

    def apply(self, kind: np.ndarray, addr: np.ndarray, value: np.ndarray) -> None:
        """Issue the given 8-byte writes (in order) through mem.write, coalesced: for each
        address the last write wins, then contiguous runs go out in one call each."""
        if kind.size == 0:
            return
        r = self.report
        r.ites_written += int((kind == _ITE).sum())
        r.dtes_written += int((kind == _DTE).sum())
        r.ctes_written += int((kind == _CTE).sum())
        r.terminator_written |= bool((kind == _TERM).any())
        r.bytes_written += ESZ * kind.size
        # Entries are 8-byte aligned (tables 64 KiB, ITTs 256 bytes): equal or disjoint.
        rev_addr = addr[::-1]
        uaddr, ridx = np.unique(rev_addr, return_index=True)  # first in reverse = last write
        uval = value[::-1][ridx]
        self.pages.append(np.unique(np.concatenate([uaddr >> PAGE_SHIFT, (uaddr + ESZ - 1) >> PAGE_SHIFT])))
        breaks = np.flatnonzero(np.diff(uaddr) != ESZ) + 1
        buf = uval.astype("<u8").view(np.uint8)
        if breaks.size >= _MANY_RUNS:  # many scattered entries: one vectorised byte write
            gpas = (uaddr[:, None] + np.arange(ESZ)).reshape(-1).astype(np.uint64)
            self.mem.write_u8(gpas, buf)
            return
        for s, e in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [uaddr.size]]), strict=True):
            self.mem.write(int(uaddr[s]), buf[s * ESZ : e * ESZ])

    def finish(self) -> ItsSaveReport:
        if self.pages:
            self.report.dirty_pages = np.unique(np.concatenate(self.pages)).astype(np.int64)
        return self.report

    def fail(self, err: int, message: str, where: str, gpa: int | None, cause=None):
        e = ItsTableError(err, f"{message} ({where})", where=where, gpa=gpa, report=self.finish())
        if cause is not None:
            e.__cause__ = cause
        return e


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
        Guest RAM holding the tables; written through ``mem.write`` (dirty-logged).
    baser0, baser1 : int
        ``GITS_BASER0`` (device table, may be two-level) and ``GITS_BASER1`` (collection
        table). A table whose ``Valid`` bit is 0 is skipped.
    devices : sequence of ItsDevice
        The mapped devices (any order; saved in DeviceID order, ITEs in EventID order).
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
        Bad arguments (duplicate DeviceIDs, EventIDs or ICIDs, misaligned ITT, pINTID < 8192,
        EventID >= 2^eventid_bits, ...). Nothing is written.

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
    gmap = _Map(mem)
    st = _SaveState(mem)
    nd = inp.ids.size

    if _valid(baser0) and nd:
        # Resolve every DTE address against the current memory. For a two-level table the
        # L1 entries are read now; this equals the kernel's interleaved reads unless a write of
        # this save lands on one of those L1 entries, in which case go device by device.
        ranks = np.arange(nd)
        ok, dte_addr = _check_ids(gmap, baser0, inp.ids)
        ops = _device_ops(inp, ranks, dte_addr)
        sequential = False
        base, _, indirect = baser_table(baser0)
        if indirect:
            l1_addrs = np.unique(base + (inp.ids[inp.ids <= VITS_MAX_DEVID] // L2_ENTRIES) * ESZ)
            sequential = bool(np.isin(ops[3][ops[0] != _CHECK], l1_addrs).any())
        if not sequential:
            _run_device_ops(st, gmap, inp, ops, ok, baser0, has_gicv4_1)
        else:
            for k in range(nd):
                okk, addrk = _check_ids(gmap, baser0, inp.ids[k : k + 1])
                opk = _device_ops(inp, np.array([k]), addrk)
                _run_device_ops(st, gmap, inp, opk, okk, baser0, has_gicv4_1)

    if _valid(baser1):
        base, nbytes, _ = baser_table(baser1)
        nc = inp.cte_val.size
        addr = base + np.arange(nc, dtype=np.int64) * ESZ
        value = inp.cte_val
        kind = np.full(nc, _CTE)
        if nc * ESZ != nbytes:
            addr = np.append(addr, base + nc * ESZ)
            value = np.append(value, _U64(0))
            kind = np.append(kind, _TERM)
        wok = gmap.writable(addr.astype(np.uint64))
        f = int(np.argmin(wok)) if not wok.all() else kind.size
        st.apply(kind[:f], addr[:f], value[:f])
        if f < kind.size:
            what = f"collection table: CTE {f}" if kind[f] == _CTE else "collection table: terminator"
            where = f"{what} at GPA {int(addr[f]):#x}"
            raise st.fail(
                _errno.EFAULT,
                "guest memory fault writing the collection table",
                where,
                int(addr[f]),
                GuestMemoryFault(int(addr[f]), write=True),
            )
    return st.finish()


def _run_device_ops(st: _SaveState, gmap: _Map, inp: _SaveInput, ops, ok, baser0: int, v41: bool) -> None:
    kind, rank, ite_index, addr, value = ops
    ranks = np.unique(rank)
    check_fail = (kind == _CHECK) & ~ok[np.searchsorted(ranks, rank)]
    ii = np.flatnonzero(kind == _ITE)
    eacces = np.zeros(kind.size, bool)
    if not v41 and ii.size:
        eacces[ii] = inp.hw[ite_index[ii]]
    wr = kind != _CHECK
    efault = np.zeros(kind.size, bool)
    efault[wr] = ~gmap.writable(addr[wr].astype(np.uint64))
    fail = check_fail | eacces | efault
    f = int(np.argmax(fail)) if fail.any() else kind.size
    keep = np.flatnonzero(wr[:f])
    st.apply(kind[keep], addr[keep], value[keep])
    if f == kind.size:
        return
    r = int(rank[f])
    dev = int(inp.ids[r])
    if check_fail[f]:
        _, gpa, reason = _check_id(gmap, baser0, dev, True)  # same memory state as the check
        raise st.fail(
            _errno.EINVAL,
            f"DeviceID {dev} fails the device-table check: {reason}",
            f"device table: DeviceID {dev}",
            gpa or None,
        )
    a = int(addr[f])
    if kind[f] == _ITE:
        j = int(ite_index[f])
        eid, pint = int(inp.eid[j]), int(inp.pintid[j])
        where = f"ITT of DeviceID {dev}: EventID {eid} (ITE GPA {a:#x}, pINTID {pint})"
        if eacces[f]:
            raise st.fail(_errno.EACCES, "forwarded LPI: its pending state is not available without GICv4.1", where, a)
        raise st.fail(_errno.EFAULT, "guest memory fault writing an ITE", where, a, GuestMemoryFault(a, write=True))
    where = f"device table: DTE of DeviceID {dev} at GPA {a:#x}"
    raise st.fail(_errno.EFAULT, "guest memory fault writing a DTE", where, a, GuestMemoryFault(a, write=True))


# ------------------------------------------------------------------------------- restore
def _walk(gmap: _Map, base: int, n_entries: int, valid_fn, step_fn) -> tuple[np.ndarray, np.ndarray, object]:
    """``scan_its_table`` over the entries [0, n_entries) at ``base``: (indices, words, terminal)
    of every valid entry the scan visits, in order, as arrays; invalid entries step 1, a valid
    one steps ``step_fn(word)`` (0 = stop). The terminal is "stop", "end" or ("fault", index).

    The table is read in growing chunks and decoded in bulk. A valid entry whose step lands on
    or before the next valid entry (a table as the kernel writes it) hands over to that entry:
    runs of such entries are taken whole; only the others (stop, end, a jump past valid entries
    or out of the chunk) are followed one by one.
    """
    pos = 0
    chunk = 512
    n_entries = max(n_entries, 1)  # the first entry is read even from an empty table
    out_i: list[np.ndarray] = []
    out_w: list[np.ndarray] = []

    def done(term):
        if not out_i:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64), term
        return np.concatenate(out_i), np.concatenate(out_w), term

    while True:
        if pos >= n_entries:
            return done("end")
        m = min(n_entries - pos, chunk)
        chunk = min(chunk * 4, 1 << 20)
        words, n = gmap.read_words(base + pos * ESZ, m)
        if n == 0:
            return done(("fault", pos))
        vidx = np.flatnonzero(valid_fn(words))
        steps = step_fn(words[vidx]).astype(np.int64)
        tgt = vidx + steps  # local index the scan moves to after each valid entry
        succ = np.searchsorted(vidx, tgt)  # next valid at or after it (if in chunk)
        nv = vidx.size
        special = np.flatnonzero((steps == 0) | (pos + tgt >= n_entries) | (tgt >= n) | (succ != np.arange(1, nv + 1)))
        k = 0  # first valid entry at or after pos (local index 0)
        while True:
            if k >= nv:  # only invalid entries left in the readable part of the chunk
                pos += n
                if n < m:
                    return done(("fault", pos))
                break
            q = int(np.searchsorted(special, k))
            j = int(special[q]) if q < special.size else nv - 1
            out_i.append(pos + vidx[k : j + 1])
            out_w.append(words[vidx[k : j + 1]])
            if q >= special.size:  # the run went to the chunk's last valid entry
                k = nv
                continue
            if steps[j] == 0:
                return done("stop")
            t = int(tgt[j])
            if pos + t >= n_entries:
                return done("end")
            if t >= n:
                pos += t
                break
            k = int(succ[j])


def _scan_entries(size_bytes: int) -> int:
    """Entries ``scan_its_table`` covers for a table of ``size_bytes``: the kernel passes the
    size as a C ``int`` and widens it to ``unsigned long``, so an ITT of 2^29..2^32 EventIDs
    (a restored DTE Size of 28..31) scans 0 bytes, i.e. only entry 0, and one of 2^28 EventIDs
    scans without bound. Entry 0 is always read."""
    as_int = ((size_bytes + (1 << 31)) % (1 << 32)) - (1 << 31)
    return (as_int % (1 << 64)) // ESZ


_SMALL = 1024  # tables of at most this many entries are walked in plain Python (measured: 2-3x
#                faster than the numpy chunk walk for 2^4 .. 2^10-entry ITTs, 4 us vs 12 us for 2^4)


def _walk_all(gmap: _Map, base: int, n_entries: int, kind: str):
    """Run the ``scan_its_table`` walk over a whole table: (indices, words, terminal) with the
    visited valid entries as Python lists. ``kind`` is "dte", "ite" or "l1"."""
    if n_entries <= _SMALL:
        return _walk_small(gmap, base, n_entries, kind)
    idx, words, term = _walk(gmap, base, n_entries, *_KINDS[kind])
    return idx.tolist(), words.tolist(), term


def _walk_small(gmap: _Map, base: int, n: int, kind: str):
    idx: list[int] = []
    out: list[int] = []
    off, words = 0, []  # words[k] is entry off + k
    i = 0
    n = max(n, 1)  # the first entry is read even from an empty table
    while True:
        if i >= n:
            return idx, out, "end"
        if i - off >= len(words):  # past the readable run: read again from entry i
            m = gmap.readable_entries(base + i * ESZ, n - i)
            if m == 0:
                return idx, out, ("fault", i)
            off, words = i, gmap.mem.read(base + i * ESZ, m * ESZ).view("<u8").tolist()
        w = words[i - off]
        if kind == "ite":
            if not (w >> 16) & 0xFFFF_FFFF:
                i += 1
                continue
            step = w >> 48
        else:
            if not w >> 63:
                i += 1
                continue
            step = (w >> 49) & DTE_NEXT_MAX if kind == "dte" else 1
        idx.append(i)
        out.append(w)
        if step == 0:
            return idx, out, "stop"
        i += step


def _bit63(words: np.ndarray) -> np.ndarray:
    return (words >> _U64(63)) != 0


def _ite_valid(words: np.ndarray) -> np.ndarray:
    return ((words >> _U64(16)) & _U64(0xFFFF_FFFF)) != 0


def _dte_step(words: np.ndarray) -> np.ndarray:
    return (words >> _U64(49)) & _U64(DTE_NEXT_MAX)


def _ite_step(words: np.ndarray) -> np.ndarray:
    return words >> _U64(48)


def _l1_step(words: np.ndarray) -> np.ndarray:
    return np.ones(words.shape, np.int64)  # the L1 scan always steps 1 (see device_tables)


_KINDS = {"dte": (_bit63, _dte_step), "ite": (_ite_valid, _ite_step), "l1": (_bit63, _l1_step)}


_EMPTY_ITES = (np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0, np.uint16), np.zeros(0, bool))


class _Restore:
    def __init__(self, gmap: _Map, n_vcpus: int, baser0: int, baser1: int, existing) -> None:
        self.gmap = gmap
        self.n_vcpus = n_vcpus
        self.baser0 = baser0
        self.baser1 = baser1
        self.collections: list[tuple[int, int]] = []
        self.devices: list[ItsDevice] = []
        self.known = set(existing)
        self.l1_cache: dict[int, int | None] = {}  # restore only reads memory: L1 words can be cached

    def fail(self, err: int, message: str, where: str, gpa: int | None):
        return ItsTableError(
            err,
            f"{message} ({where})",
            where=where,
            gpa=gpa,
            collections=list(self.collections),
            devices=list(self.devices),
        )

    # ------------------------------------------------------------------ collections
    def collections_table(self) -> None:
        if not _valid(self.baser1):
            return
        base, nbytes, _ = baser_table(self.baser1)
        total = nbytes // ESZ
        pos = 0
        chunk = 512
        while pos < total:
            m = min(total - pos, chunk)
            chunk = min(chunk * 4, 1 << 20)
            words, n = self.gmap.read_words(base + pos * ESZ, m)
            inval = ~_bit63(words)
            stop = int(np.argmax(inval)) if inval.any() else n
            self._ctes(words[:stop], pos, base)
            if stop < n:
                return
            if n < m:
                a = base + (pos + n) * ESZ
                raise self.fail(
                    _errno.EFAULT,
                    "guest memory fault reading the collection table",
                    f"collection table: CTE {pos + n} at GPA {a:#x}",
                    a,
                )
            pos += n

    def _ctes(self, words: np.ndarray, pos0: int, base: int) -> None:
        if words.size == 0:
            return
        rd = ((words >> _U64(16)) & _U64(0xFFFF_FFFF)).astype(np.int64)
        icid = (words & _U64(0xFFFF)).astype(np.int64)
        bad_rd = (rd != COLLECTION_NOT_MAPPED) & (rd >= self.n_vcpus)
        _, first = np.unique(icid, return_index=True)
        dup = np.ones(icid.size, bool)
        dup[first] = False
        if self.known:
            dup |= np.isin(icid, np.fromiter(self.known, np.int64))
        _, ct_bytes, _ = baser_table(self.baser1)
        ct_base = baser_table(self.baser1)[0]
        bad_id = (icid >= ct_bytes // ESZ) | ~self.gmap.visible((ct_base + icid * ESZ).astype(np.uint64))
        bad = bad_rd | dup | bad_id
        f = int(np.argmax(bad)) if bad.any() else icid.size
        self.collections.extend(zip(icid[:f].tolist(), rd[:f].tolist(), strict=False))
        self.known.update(icid[:f].tolist())
        if f == icid.size:
            return
        a = base + (pos0 + f) * ESZ
        where = f"collection table: CTE {pos0 + f} at GPA {a:#x} (ICID {int(icid[f])}, RDBase {int(rd[f]):#x})"
        if bad_rd[f]:
            raise self.fail(_errno.EINVAL, f"RDBase is not a vCPU id (n_vcpus = {self.n_vcpus})", where, a)
        if dup[f]:
            raise self.fail(_errno.EEXIST, "collection already exists", where, a)
        raise self.fail(_errno.EINVAL, "ICID fails the collection-table check", where, a)

    # ---------------------------------------------------------------------- devices
    def device_tables(self) -> None:
        if not _valid(self.baser0):
            return
        base, nbytes, indirect = baser_table(self.baser0)
        if not indirect:
            self._dte_scan(base, nbytes // ESZ, 0)
            return
        l1_idx, l1_words, term = _walk_all(self.gmap, base, nbytes // ESZ, "l1")
        for i, w in zip(l1_idx, l1_words, strict=True):
            start = (i * L2_ENTRIES) & 0xFFFF_FFFF
            if self._dte_scan(w & _ADDR_51_16, L2_ENTRIES, start) == "stop":
                return
        if isinstance(term, tuple):
            a = base + term[1] * ESZ
            raise self.fail(
                _errno.EFAULT,
                "guest memory fault reading the level-1 device table",
                f"device table: L1 entry {term[1]} at GPA {a:#x}",
                a,
            )

    def _dte_scan(self, base: int, n: int, start_id: int) -> str:
        idx, words, term = _walk_all(self.gmap, base, n, "dte")
        indirect = baser_table(self.baser0)[2]
        for i, w in zip(idx, words, strict=True):
            dev_id = (start_id + i) & 0xFFFF_FFFF
            a = base + i * ESZ
            # check_id: in a flat table the ID is in range and its entry visible by
            # construction (it was just read from there); a two-level table re-reads the L1
            # entry of the (32-bit wrapped) ID, which may not be the one being scanned.
            if dev_id > VITS_MAX_DEVID or (indirect and not self._l2_ok(dev_id)):
                ok, _, reason = _check_id(self.gmap, self.baser0, dev_id, True, self.l1_cache)
                if not ok:
                    raise self.fail(
                        _errno.EINVAL,
                        f"DeviceID fails the device-table check: {reason}",
                        f"device table: DTE of DeviceID {dev_id} at GPA {a:#x}",
                        a,
                    )
            dev = ItsDevice(dev_id, ((w >> 5) & ((1 << 44) - 1)) << 8, (w & 0x1F) + 1, *_EMPTY_ITES)
            self.devices.append(dev)
            self._itt(dev)
        if term == "stop":
            return "stop"
        if isinstance(term, tuple):
            a = base + term[1] * ESZ
            raise self.fail(
                _errno.EFAULT,
                "guest memory fault reading the device table",
                f"device table: DTE of DeviceID {(start_id + term[1]) & 0xFFFF_FFFF} at GPA {a:#x}",
                a,
            )
        return "end"

    def _l2_ok(self, dev_id: int) -> bool:
        """Fast path of ``vgic_its_check_id`` for a DeviceID <= 0xffff in a two-level table
        (False sends the caller to :func:`_check_id`, which also says why)."""
        index = dev_id // L2_ENTRIES  # <= 7, always inside a level-1 table of >= 8192 entries
        if index not in self.l1_cache:
            _check_id(self.gmap, self.baser0, index * L2_ENTRIES, True, self.l1_cache)  # fills it
        l1 = self.l1_cache[index]
        return (
            l1 is not None and bool(l1 >> 63) and self.gmap.visible1((l1 & _ADDR_51_16) + (dev_id % L2_ENTRIES) * ESZ)
        )

    def _itt(self, dev: ItsDevice) -> None:
        bits = dev.eventid_bits
        limit = 1 << bits
        n_scan = _scan_entries(limit * ESZ)
        if n_scan <= _SMALL:
            li, lw, term = _walk_small(self.gmap, dev.itt_addr, n_scan, "ite")
            idx, words = np.array(li, np.int64), np.array(lw, np.uint64)
        else:
            idx, words, term = _walk(self.gmap, dev.itt_addr, n_scan, *_KINDS["ite"])
        # the checks of vgic_its_restore_ite, in the kernel's order, for every visited ITE
        eid = idx & 0xFFFF_FFFF  # the scan's int id, seen as u32 by the callback
        pint = (words >> _U64(16)) & _U64(0xFFFF_FFFF)
        nxt = (words >> _U64(48)).astype(np.int64)
        icid = (words & _U64(0xFFFF)).astype(np.int64)
        known = np.fromiter(self.known, np.int64, len(self.known))
        checks = (
            (pint < _U64(MIN_LPI), f"pINTID below {MIN_LPI}"),
            (((eid + nxt) & 0xFFFF_FFFF) >= limit, f"EventID + next is not below 2^{bits}"),  # u32 sum
            (~np.isin(icid, known), "the ITE's collection does not exist"),
            (eid >= limit, f"EventID is not below 2^{bits}"),  # vgic_its_check_event_id
        )
        bad = np.zeros(idx.size, bool)
        for m, _ in checks:
            bad |= m
        f = int(np.argmax(bad)) if bad.any() else idx.size
        dev.event_id = eid[:f].astype(np.uint32)
        dev.pintid = pint[:f].astype(np.uint32)
        dev.icid = icid[:f].astype(np.uint16)
        dev.hw = np.zeros(f, bool)
        if f < idx.size:
            msg = next(text for m, text in checks if m[f])
            i, w = int(idx[f]), int(words[f])
            a = dev.itt_addr + i * ESZ
            where = (
                f"ITT of DeviceID {dev.device_id}: EventID {i} at GPA {a:#x} "
                f"(pINTID {(w >> 16) & 0xFFFF_FFFF}, ICID {w & 0xFFFF}, next {w >> 48})"
            )
            raise self.fail(_errno.EINVAL, msg, where, a)
        if isinstance(term, tuple):
            a = dev.itt_addr + term[1] * ESZ
            raise self.fail(
                _errno.EFAULT,
                "guest memory fault reading an ITT",
                f"ITT of DeviceID {dev.device_id}: EventID {term[1]} at GPA {a:#x}",
                a,
            )


def restore_tables_v0(
    mem: GuestMemory,
    baser0: int,
    baser1: int,
    *,
    n_vcpus: int,
    existing_collections: Sequence[int] = (),
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

    Returns
    -------
    collections : list of (icid, rdbase)
        Restored collections in table order.
    devices : list of ItsDevice
        Restored devices in DeviceID scan order, each with its ITEs in EventID scan order
        (``hw`` all False). This is the order in which KVM creates the LPIs.

    Raises
    ------
    ItsTableError
        ``EINVAL``, ``EEXIST`` or ``EFAULT``; ``.collections``/``.devices`` hold what was
        restored before the error.
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
    existing = []
    for i, c in enumerate(existing_collections):
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < 1 << 16:
            raise ValueError(f"existing_collections[{i}] must be an ICID in [0, 65536), got {c!r}")
        existing.append(int(c))
    r = _Restore(_Map(mem), int(n_vcpus), baser0, baser1, existing)
    r.collections_table()
    r.device_tables()
    return r.collections, r.devices
