"""Guest physical memory: memslots, faults and a dirty-page log.

A :class:`GuestMemory` is a guest physical address space (52-bit, like arm64 with LPA) made of
memslots. Unlike KVM's page-granular memslots, vlpi's slots have byte granularity so that tests
can put the end of RAM in the middle of a pending table. Slots may be adjacent, never overlap, and
may be read-only. A slot is backed by a NumPy ``uint8`` array: either one you pass (``data=``, used
in place, never copied) or a lazily zero-filled one (``np.zeros`` maps untouched pages to the zero
page, so a 4 GiB slot costs nothing until written).

Every write through this class or the engine is recorded in a dirty-page log of 4 KiB guest
pages, as KVM's dirty log records the writes of ``SAVE_PENDING_TABLES``. Writes you make directly
into a slot's array are not logged (they are not guest or KVM writes).

Slots are immutable: a :class:`MemSlot` is a frozen record, and the slot set changes only through
:meth:`GuestMemory.add_slot` and :meth:`GuestMemory.remove_slot`, which wait for engine calls on the
same memory to finish. A backing array belongs to one slot of one ``GuestMemory``: an array that
overlaps the backing store of any live slot is refused, so no two slots (or memories) alias.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from vlpi._typing import BoolArray, I64Array, U8Array, U64Array
from vlpi.errors import GuestMemoryFault

__all__ = ["GuestMemory", "MemSlot", "PAGE_SHIFT", "PAGE_SIZE", "GPA_LIMIT", "MAX_READ"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
GPA_BITS = 52
GPA_LIMIT = 1 << GPA_BITS
MAX_READ = 1 << 32  # bytes one GuestMemory.read may copy

#: What :meth:`GuestMemory.kernel_tables` returns (engine interface): slot starts, ends, backing
#: addresses and read-only flags; the merged (starts, ends) extents of all slots and of the
#: writable ones; the slots' backing arrays.
KernelTables: TypeAlias = tuple[
    U64Array, U64Array, U64Array, U8Array, tuple[U64Array, U64Array], tuple[U64Array, U64Array], tuple[U8Array, ...]
]


@dataclass(eq=False, frozen=True)
class MemSlot:
    """One memslot: ``size`` bytes of guest RAM at ``gpa``.

    A frozen record: its fields cannot be reassigned. The bytes of ``data`` may be written (they
    are guest RAM; such writes are not logged); ``data`` must not be resized. ``dirty`` is the
    slot's part of the dirty log, owned by its :class:`GuestMemory` (read it through
    :meth:`GuestMemory.dirty_pages`). Thread safety: as its ``GuestMemory``'s.
    """

    gpa: int
    size: int
    readonly: bool
    data: U8Array = field(repr=False)
    dirty: BoolArray = field(repr=False)  # bool per 4 KiB page from gpa >> 12 on

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def page0(self) -> int:
        return self.gpa >> PAGE_SHIFT


def _as_int(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    return int(value)


def _as_gpa(value: object, name: str) -> int:
    """A non-negative integer address (one beyond the 52-bit space faults, as in the kernel)."""
    v = _as_int(value, name)
    if v < 0:
        raise ValueError(f"{name} = {v} is negative: not a guest physical address")
    return v


def _as_flag(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _gpa_array(gpas: npt.ArrayLike, name: str) -> U64Array:
    """GPAs as uint64; negative or non-integer values are an error naming the index."""
    if isinstance(gpas, (str, bytes)):
        raise TypeError(f"{name} must be integer guest physical addresses, got {type(gpas).__name__}")
    a = np.asarray(gpas)
    if a.size == 0:
        return np.zeros(a.shape, np.uint64)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        if a.dtype == object:
            try:
                a = np.asarray(gpas, dtype=np.int64)  # Python ints beyond int64 raise OverflowError
            except (OverflowError, TypeError, ValueError):
                raise TypeError(f"{name} must be integer guest physical addresses below 2**{GPA_BITS}") from None
        else:
            raise TypeError(f"{name} must be integer guest physical addresses, got dtype {a.dtype}")
    flat = a.reshape(-1)
    bad = np.flatnonzero(flat < 0) if np.issubdtype(a.dtype, np.signedinteger) else np.zeros(0, np.intp)
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] = {flat[bad[0]]} is negative: not a guest physical address")
    return a.astype(np.uint64)  # addresses beyond the 52-bit space fault like unmapped ones


_ALL_MEMORIES: weakref.WeakSet[GuestMemory] = weakref.WeakSet()  # every live GuestMemory (backing-store aliasing check)
_REGISTRY_LOCK = threading.Lock()


class GuestMemory:
    """A guest physical address space made of memslots.

    What may change in place: the bytes of a slot's backing array (guest RAM; such writes are not
    logged). What may not: the slot set changes only through :meth:`add_slot`/:meth:`remove_slot`;
    :class:`MemSlot` records are frozen; a backing array must not be resized
    (``ndarray.resize(refcheck=False)``, numpy's unchecked escape hatch) while it is a slot.

    Thread safety: slot changes, reads, writes, the dirty log and every engine call on this
    memory hold the memory's lock (re-entrant), so adding or removing a slot while another thread
    saves into the memory waits for that save to finish; engine calls on one memory run one at a
    time. ``slots``, ``slot_at`` and ``extents`` return consistent snapshots. Two memories never
    share backing storage (``add_slot`` refuses an array that overlaps a live slot's), so calls on
    different memories are independent.

    Examples
    --------
    >>> mem = GuestMemory()
    >>> ram = mem.add_slot(0x4000_0000, 1 << 20)         # 1 MiB, zero-filled lazily
    >>> mem.write(0x4000_0400, np.array([0xFF], np.uint8))
    >>> mem.read(0x4000_0400, 2).tolist()
    [255, 0]
    >>> mem.dirty_pages().tolist()
    [262144]
    """

    def __init__(self) -> None:
        self._slots: list[MemSlot] = []  # replaced (never mutated) on every slot change
        self._generation = 0  # bumped on every slot change; engine caches key on it
        self._tables: KernelTables | None = None
        self._dirty_pending: list[npt.NDArray[np.integer[Any]]] = []  # page arrays logged by the engine, applied lazily
        self._lock = threading.RLock()
        _ALL_MEMORIES.add(self)

    @property
    def generation(self) -> int:
        """Bumped on every slot change (read-only); engine caches key on it."""
        return self._generation

    # ------------------------------------------------------------------ slots
    def add_slot(
        self, gpa: int, size: int | None = None, *, readonly: bool = False, data: np.ndarray | None = None
    ) -> U8Array:
        """Add a memslot and return its backing array.

        Parameters
        ----------
        gpa : int
            First guest physical address of the slot (any byte; no alignment required).
        size : int, optional
            Size in bytes (> 0). May be omitted when ``data`` is given.
        readonly : bool
            Writes into the slot fault (``GuestMemoryFault`` with ``write=True``).
        data : numpy.ndarray, optional
            Backing store: ``uint8``, C-contiguous, exactly ``size`` elements. Used in place: the
            engine's writes land in it. Must be writeable unless ``readonly``, and must not
            overlap the backing store of any slot of any live ``GuestMemory``.

        Returns
        -------
        numpy.ndarray
            The slot's 1-D ``uint8`` array (a view of ``data`` when given).

        Raises
        ------
        TypeError
            ``gpa``/``size`` not integers, ``data`` not a uint8 ndarray.
        ValueError
            Empty slot, slot outside the 52-bit space, overlap with an existing slot, ``data``
            not C-contiguous, of the wrong size, read-only for a writable slot, or sharing memory
            with a live slot.
        """
        gpa = _as_int(gpa, "gpa")
        readonly = _as_flag(readonly, "add_slot: readonly")
        if data is not None and not isinstance(data, np.ndarray):
            raise TypeError(f"add_slot: data must be a numpy.ndarray of uint8, got {type(data).__name__}")
        if size is None:
            if data is None:
                raise TypeError("add_slot needs size= or data=")
            size = int(data.size)
        size = _as_int(size, "size")
        if size <= 0:
            raise ValueError(f"add_slot: size must be > 0, got {size}")
        if gpa < 0 or gpa + size > GPA_LIMIT:
            raise ValueError(
                f"add_slot: slot [{gpa:#x}, {gpa + size:#x}) lies outside the {GPA_BITS}-bit "
                f"guest physical address space [0, {GPA_LIMIT:#x})"
            )
        if data is None:
            try:
                arr = np.zeros(size, dtype=np.uint8)  # calloc: pages committed only when written
            except MemoryError:
                raise ValueError(f"add_slot: size = {size} bytes cannot be allocated in host memory") from None
        else:
            if not isinstance(data, np.ndarray):
                raise TypeError(f"add_slot: data must be a numpy.ndarray of uint8, got {type(data).__name__}")
            if data.dtype != np.uint8:
                raise TypeError(f"add_slot: data must have dtype uint8, got {data.dtype}")
            if not data.flags.c_contiguous:
                raise ValueError("add_slot: data must be C-contiguous (it is used in place, never copied)")
            if data.size != size:
                raise ValueError(f"add_slot: data has {data.size} bytes but size={size}")
            if not readonly and not data.flags.writeable:
                raise ValueError("add_slot: data is read-only but the slot is writable (pass readonly=True)")
            arr = data.reshape(-1)
        npages = ((gpa + size - 1) >> PAGE_SHIFT) - (gpa >> PAGE_SHIFT) + 1
        with _REGISTRY_LOCK, self._lock:
            for s in self._slots:
                if gpa < s.end and s.gpa < gpa + size:
                    raise ValueError(
                        f"add_slot: slot [{gpa:#x}, {gpa + size:#x}) overlaps existing slot "
                        f"[{s.gpa:#x}, {s.end:#x})"
                    )
            if data is not None:
                _check_unshared(arr, self)
            slot = MemSlot(gpa, size, readonly, arr, np.zeros(npages, dtype=bool))
            self._apply_dirty()
            self._slots = sorted([*self._slots, slot], key=lambda s: s.gpa)
            self._changed()
        return arr

    def remove_slot(self, gpa: int) -> None:
        """Remove the slot that starts at ``gpa`` (its dirty log goes with it). Waits for engine
        calls on this memory in other threads to finish."""
        gpa = _as_int(gpa, "gpa")
        with self._lock:
            for i, s in enumerate(self._slots):
                if s.gpa == gpa:
                    self._apply_dirty()
                    self._slots = self._slots[:i] + self._slots[i + 1 :]
                    self._changed()
                    return
        raise ValueError(f"remove_slot: no slot starts at GPA {gpa:#x}")

    @property
    def slots(self) -> tuple[MemSlot, ...]:
        """The slots, sorted by GPA (their ``dirty`` bitmaps brought up to date)."""
        with self._lock:
            self._apply_dirty()
            return tuple(self._slots)

    def slot_at(self, gpa: int) -> MemSlot | None:
        """The slot containing ``gpa``, or None."""
        gpa = _as_int(gpa, "gpa")
        for s in self._slots:  # a snapshot: the list is replaced, never mutated
            if s.gpa <= gpa < s.end:
                return s
        return None

    def _changed(self) -> None:
        self._generation += 1
        self._tables = None

    # ------------------------------------------------------- kernel interface
    # Used by the engine (vlpi.pending) only; not for user code. The engine holds ``lock`` from
    # validation to the end of the kernel, so the tables it validated cannot change under it.
    @property
    def lock(self) -> threading.RLock:
        """The re-entrant lock that engine calls and slot changes hold (engine interface)."""
        return self._lock

    def kernel_tables(self) -> KernelTables:
        """Slot tables for kernels: (starts, ends, ptrs, readonly) as read-only uint64/uint8
        arrays, the merged readable and writable extents, and the slots' backing arrays (kept
        alive with the tables). Cached until the slots change. Engine callers hold the lock."""
        t = self._tables
        if t is None:
            slots = self._slots
            for s in slots:  # a slot changed by going around the frozen dataclass is not used
                d = s.data
                if not (isinstance(d, np.ndarray) and d.flags.c_contiguous and d.nbytes == s.size
                        and d.dtype == np.uint8):
                    raise RuntimeError(f"memslot at GPA {s.gpa:#x} was changed behind GuestMemory's back")
            starts = np.array([s.gpa for s in slots], dtype=np.uint64)
            ends = np.array([s.end for s in slots], dtype=np.uint64)
            ptrs = np.array([s.data.ctypes.data for s in slots], dtype=np.uint64)
            ro = np.array([s.readonly for s in slots], dtype=np.uint8)
            for a in (starts, ends, ptrs, ro):
                a.flags.writeable = False
            t = (starts, ends, ptrs, ro, _merge(slots, False), _merge(slots, True), tuple(s.data for s in slots))
            self._tables = t
        return t

    def extents(self, writable: bool = False) -> tuple[U64Array, U64Array]:
        """Guest address ranges covered by slots, adjacent slots merged: (starts, ends) as
        read-only uint64 arrays, sorted, ends exclusive. ``writable``: read-only slots left out.
        Cached until the slots change."""
        t = self.kernel_tables()
        return t[5] if writable else t[4]

    def covered(self, lo: U64Array, hi: U64Array, writable: bool) -> BoolArray:
        """For inclusive address ranges [lo, hi]: True where one extent of adjacent slots (writable
        ones only if ``writable``) covers the whole range."""
        ext = self.extents(writable)
        if ext[0].size == 0:
            return np.zeros(np.shape(lo), dtype=bool)
        i = np.searchsorted(ext[0], lo, side="right") - 1
        ok = i >= 0
        ic = np.where(ok, i, 0)
        return ok & (hi < ext[1][ic])

    def mark_dirty(self, pages: npt.NDArray[np.integer[Any]]) -> None:
        """Log writes to the given 4 KiB page numbers. O(1): the engine calls this once per VM per
        save (holding the lock), and the pages are applied to the per-slot bitmaps when the log
        is next read."""
        if len(pages):
            self._dirty_pending.append(pages)

    def _apply_dirty(self) -> None:
        if not self._dirty_pending:
            return
        with self._lock:
            self._apply_dirty_locked()

    def _apply_dirty_locked(self) -> None:
        if not self._dirty_pending:
            return
        pages = np.concatenate(self._dirty_pending).astype(np.int64, copy=False)
        self._dirty_pending = []
        for s in self._slots:
            last = (s.end - 1) >> PAGE_SHIFT
            sel = pages[(pages >= s.page0) & (pages <= last)]
            if sel.size:
                s.dirty[sel - s.page0] = True

    # ------------------------------------------------------------- accesses
    def _pieces(self, gpa: int, n: int, write: bool) -> list[tuple[MemSlot, int, int]]:
        """Split [gpa, gpa+n) into (slot, offset, length) pieces or raise at the first bad byte."""
        out: list[tuple[MemSlot, int, int]] = []
        pos, end = gpa, gpa + n
        while pos < end:
            s = self.slot_at(pos)
            if s is None:
                raise GuestMemoryFault(pos, write=write, detail="no memslot maps this address")
            if write and s.readonly:
                raise GuestMemoryFault(pos, write=True, detail=f"memslot at {s.gpa:#x} is read-only")
            take = min(end, s.end) - pos
            out.append((s, pos - s.gpa, take))
            pos += take
        return out

    def read(self, gpa: int, n: int) -> U8Array:
        """Copy ``n`` bytes from ``gpa`` (may span adjacent slots).

        Raises ``GuestMemoryFault`` naming the first unmapped byte (before allocating anything);
        ``ValueError`` for a negative ``gpa`` or ``n``, or ``n`` above :data:`MAX_READ` (4 GiB).
        """
        gpa, n = _as_gpa(gpa, "read: gpa"), _as_int(n, "read: n")
        if n < 0:
            raise ValueError(f"read: n must be >= 0, got {n}")
        if n > MAX_READ:
            raise ValueError(f"read: n = {n} bytes is more than one read may copy ({MAX_READ} bytes, 4 GiB)")
        with self._lock:
            pieces = self._pieces(gpa, n, False)
            try:
                out = np.empty(n, dtype=np.uint8)
            except MemoryError:
                raise ValueError(f"read: n = {n} bytes is too large to copy into host memory") from None
            k = 0
            for s, off, take in pieces:
                out[k : k + take] = s.data[off : off + take]
                k += take
        return out

    def write(self, gpa: int, data: npt.ArrayLike) -> None:
        """Write bytes at ``gpa`` (may span adjacent slots) and log the dirtied pages.

        The whole range is checked first: on a fault nothing is written.
        """
        gpa = _as_gpa(gpa, "write: gpa")
        buf = _bytes(data, "write: data")
        with self._lock:
            pieces = self._pieces(gpa, buf.size, True)
            k = 0
            for s, off, take in pieces:
                s.data[off : off + take] = buf[k : k + take]
                p0 = (s.gpa + off) >> PAGE_SHIFT
                p1 = (s.gpa + off + take - 1) >> PAGE_SHIFT
                s.dirty[p0 - s.page0 : p1 - s.page0 + 1] = True
                k += take

    def _resolve(self, gpas: npt.ArrayLike, name: str) -> tuple[U64Array, npt.NDArray[np.intp], BoolArray, U8Array]:
        starts, ends, _, ro, _, _, _ = self.kernel_tables()
        gpas = _gpa_array(gpas, name)
        idx = np.searchsorted(starts, gpas, side="right") - 1
        ok = idx >= 0
        idxc = np.where(ok, idx, 0)
        ok &= gpas < ends[idxc] if ends.size else False
        return gpas, idxc, ok, ro

    def read_u8(self, gpas: npt.ArrayLike) -> U8Array:
        """Vectorised 1-byte reads at arbitrary GPAs. Faults (naming the first bad GPA, in the
        order given) before returning anything. ``ValueError`` for a negative GPA, ``TypeError``
        for non-integers."""
        with self._lock:
            gpas, idx, ok, _ = self._resolve(gpas, "read_u8: gpas")
            if not ok.all():
                bad = int(np.argmin(ok))
                raise GuestMemoryFault(int(gpas.flat[bad]), detail=f"gpas[{bad}] is not in any memslot")
            out = np.empty(gpas.shape, dtype=np.uint8)
            slots = self._slots
            for si in np.unique(idx):
                sel = idx == si
                s = slots[si]
                out[sel] = s.data[(gpas[sel] - np.uint64(s.gpa)).astype(np.int64)]
        return out

    def write_u8(self, gpas: npt.ArrayLike, values: npt.ArrayLike) -> None:
        """Vectorised 1-byte writes (later duplicates win). Checks every GPA first: on a fault
        nothing is written."""
        with self._lock:
            gpas, idx, ok, ro = self._resolve(gpas, "write_u8: gpas")
            vals = _bytes(values, "write_u8: values")
            try:
                values = np.broadcast_to(vals if vals.size != 1 else vals.reshape(()), gpas.shape)
            except ValueError:
                raise ValueError(f"write_u8: {vals.size} values for {gpas.size} gpas") from None
            if not ok.all():
                bad = int(np.argmin(ok))
                raise GuestMemoryFault(int(gpas.flat[bad]), write=True, detail=f"gpas[{bad}] is not in any memslot")
            if ro.size and ro[idx].any():
                bad = int(np.argmax(ro[idx]))
                raise GuestMemoryFault(int(gpas.flat[bad]), write=True, detail=f"gpas[{bad}] is in a read-only memslot")
            slots = self._slots
            for si in np.unique(idx):
                sel = idx == si
                s = slots[si]
                s.data[(gpas[sel] - np.uint64(s.gpa)).astype(np.int64)] = values[sel]
            self.mark_dirty((gpas.reshape(-1) >> np.uint64(PAGE_SHIFT)).astype(np.int64))

    # ------------------------------------------------------------ dirty log
    def dirty_pages(self) -> I64Array:
        """Sorted unique 4 KiB guest page numbers (GPA >> 12) written since the last
        :meth:`clear_dirty`."""
        with self._lock:
            self._apply_dirty()
            parts = [np.flatnonzero(s.dirty).astype(np.int64) + s.page0 for s in self._slots]
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate(parts))

    def clear_dirty(self) -> None:
        """Clear the dirty-page log."""
        with self._lock:
            self._dirty_pending = []
            for s in self._slots:
                s.dirty[:] = False

    def __repr__(self) -> str:
        parts = ", ".join(
            f"[{s.gpa:#x}+{s.size:#x}{' ro' if s.readonly else ''}]" for s in self._slots
        )
        return f"GuestMemory({parts})"


def _bytes(data: npt.ArrayLike, what: str) -> U8Array:
    """Byte values as a flat uint8 array; values outside 0..255 are an error, not a wrap."""
    a = np.asarray(data)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a).reshape(-1)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        if a.size == 0:
            return np.zeros(0, np.uint8)
        raise TypeError(f"{what} must be byte values (integers 0..255), got dtype {a.dtype}")
    flat = a.reshape(-1)
    bad = np.flatnonzero((flat < 0) | (flat > 255))
    if bad.size:
        raise ValueError(f"{what}[{bad[0]}] = {flat[bad[0]]} is not a byte value (0..255)")
    return flat.astype(np.uint8)


def _check_unshared(arr: np.ndarray, mem: GuestMemory) -> None:
    """Refuse a backing array that overlaps a live slot's (caller holds the registry lock)."""
    for m in list(_ALL_MEMORIES):
        for s in m._slots:
            if np.may_share_memory(arr, s.data):
                whose = "this GuestMemory's" if m is mem else "another GuestMemory's"
                raise ValueError(
                    f"add_slot: data shares memory with {whose} slot at GPA {s.gpa:#x}; a backing array "
                    "belongs to one slot of one GuestMemory (pass a copy)"
                )


def _merge(slots: list[MemSlot], writable_only: bool) -> tuple[U64Array, U64Array]:
    """Merge adjacent slots into extents (start, end) arrays."""
    st: list[int] = []
    en: list[int] = []
    for s in slots:
        if writable_only and s.readonly:
            continue
        if en and en[-1] == s.gpa:
            en[-1] = s.end
        else:
            st.append(s.gpa)
            en.append(s.end)
    starts, ends = np.array(st, dtype=np.uint64), np.array(en, dtype=np.uint64)
    starts.flags.writeable = False
    ends.flags.writeable = False
    return starts, ends
