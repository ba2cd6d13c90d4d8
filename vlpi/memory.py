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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlpi.errors import GuestMemoryFault

__all__ = ["GuestMemory", "MemSlot", "PAGE_SHIFT", "PAGE_SIZE", "GPA_LIMIT"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
GPA_BITS = 52
GPA_LIMIT = 1 << GPA_BITS


@dataclass(eq=False)
class MemSlot:
    """One memslot: ``size`` bytes of guest RAM at ``gpa``."""

    gpa: int
    size: int
    readonly: bool
    data: np.ndarray = field(repr=False)
    dirty: np.ndarray = field(repr=False)  # bool per 4 KiB page from gpa >> 12 on

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def page0(self) -> int:
        return self.gpa >> PAGE_SHIFT


def _as_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    return int(value)


class GuestMemory:
    """A guest physical address space made of memslots.

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
        self._slots: list[MemSlot] = []
        self.generation = 0  # bumped on every slot change; engine caches key on it
        self._tables = None
        self._dirty_pending: list[np.ndarray] = []  # page arrays logged by the engine, applied lazily

    # ------------------------------------------------------------------ slots
    def add_slot(
        self, gpa: int, size: int | None = None, *, readonly: bool = False, data: np.ndarray | None = None
    ) -> np.ndarray:
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
            engine's writes land in it. Must be writeable unless ``readonly``.

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
            not C-contiguous, of the wrong size or read-only for a writable slot.
        """
        gpa = _as_int(gpa, "gpa")
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
            arr = np.zeros(size, dtype=np.uint8)  # calloc: pages committed only when written
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
        for s in self._slots:
            if gpa < s.end and s.gpa < gpa + size:
                raise ValueError(
                    f"add_slot: slot [{gpa:#x}, {gpa + size:#x}) overlaps existing slot "
                    f"[{s.gpa:#x}, {s.end:#x})"
                )
        npages = ((gpa + size - 1) >> PAGE_SHIFT) - (gpa >> PAGE_SHIFT) + 1
        slot = MemSlot(gpa, size, bool(readonly), arr, np.zeros(npages, dtype=bool))
        self._slots.append(slot)
        self._slots.sort(key=lambda s: s.gpa)
        self._changed()
        return arr

    def remove_slot(self, gpa: int) -> None:
        """Remove the slot that starts at ``gpa`` (its dirty log goes with it)."""
        gpa = _as_int(gpa, "gpa")
        for i, s in enumerate(self._slots):
            if s.gpa == gpa:
                del self._slots[i]
                self._changed()
                return
        raise ValueError(f"remove_slot: no slot starts at GPA {gpa:#x}")

    @property
    def slots(self) -> tuple[MemSlot, ...]:
        """The slots, sorted by GPA (their ``dirty`` bitmaps brought up to date)."""
        self._apply_dirty()
        return tuple(self._slots)

    def slot_at(self, gpa: int) -> MemSlot | None:
        """The slot containing ``gpa``, or None."""
        for s in self._slots:
            if s.gpa <= gpa < s.end:
                return s
        return None

    def _changed(self) -> None:
        self._apply_dirty()
        self.generation += 1
        self._tables = None

    # ------------------------------------------------------- kernel interface
    def _kernel_tables(self):
        """Slot tables for kernels: (starts, ends, ptrs, readonly) as uint64/uint8 arrays, and
        the merged readable and writable extents. Cached until the slots change."""
        if self._tables is None:
            starts = np.array([s.gpa for s in self._slots], dtype=np.uint64)
            ends = np.array([s.end for s in self._slots], dtype=np.uint64)
            ptrs = np.array([s.data.ctypes.data for s in self._slots], dtype=np.uint64)
            ro = np.array([s.readonly for s in self._slots], dtype=np.uint8)
            self._tables = (starts, ends, ptrs, ro, _merge(self._slots, False), _merge(self._slots, True))
        return self._tables

    def extents(self, writable: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Guest address ranges covered by slots, adjacent slots merged: (starts, ends) as
        read-only uint64 arrays, sorted, ends exclusive. ``writable``: read-only slots left out.
        Cached until the slots change."""
        return self._kernel_tables()[5 if writable else 4]

    def _covered(self, lo: np.ndarray, hi: np.ndarray, writable: bool) -> np.ndarray:
        """For inclusive address ranges [lo, hi]: True where one extent of adjacent slots (writable
        ones only if ``writable``) covers the whole range."""
        ext = self.extents(writable)
        if ext[0].size == 0:
            return np.zeros(np.shape(lo), dtype=bool)
        i = np.searchsorted(ext[0], lo, side="right") - 1
        ok = i >= 0
        ic = np.where(ok, i, 0)
        return ok & (hi < ext[1][ic])

    def _mark_dirty(self, pages: np.ndarray) -> None:
        """Log writes to the given 4 KiB page numbers. O(1): the engine calls this once per VM per
        save, and the pages are applied to the per-slot bitmaps when the log is next read."""
        if len(pages):
            self._dirty_pending.append(pages)

    def _apply_dirty(self) -> None:
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
    def _pieces(self, gpa: int, n: int, write: bool):
        """Split [gpa, gpa+n) into (slot, offset, length) pieces or raise at the first bad byte."""
        out = []
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

    def read(self, gpa: int, n: int) -> np.ndarray:
        """Copy ``n`` bytes from ``gpa`` (may span adjacent slots).

        Raises ``GuestMemoryFault`` naming the first unmapped byte.
        """
        gpa, n = _as_int(gpa, "gpa"), _as_int(n, "n")
        if n < 0:
            raise ValueError(f"read: n must be >= 0, got {n}")
        out = np.empty(n, dtype=np.uint8)
        k = 0
        for s, off, take in self._pieces(gpa, n, False):
            out[k : k + take] = s.data[off : off + take]
            k += take
        return out

    def write(self, gpa: int, data) -> None:
        """Write bytes at ``gpa`` (may span adjacent slots) and log the dirtied pages.

        The whole range is checked first: on a fault nothing is written.
        """
        gpa = _as_int(gpa, "gpa")
        buf = _bytes(data, "write: data")
        pieces = self._pieces(gpa, buf.size, True)
        k = 0
        for s, off, take in pieces:
            s.data[off : off + take] = buf[k : k + take]
            p0 = (s.gpa + off) >> PAGE_SHIFT
            p1 = (s.gpa + off + take - 1) >> PAGE_SHIFT
            s.dirty[p0 - s.page0 : p1 - s.page0 + 1] = True
            k += take

    def _resolve(self, gpas: np.ndarray):
        starts, ends, _, ro, _, _ = self._kernel_tables()
        gpas = np.asarray(gpas, dtype=np.uint64)
        idx = np.searchsorted(starts, gpas, side="right") - 1
        ok = idx >= 0
        idxc = np.where(ok, idx, 0)
        ok &= gpas < ends[idxc] if ends.size else False
        return gpas, idxc, ok, ro

    def read_u8(self, gpas) -> np.ndarray:
        """Vectorised 1-byte reads at arbitrary GPAs. Faults (naming the first bad GPA, in the
        order given) before returning anything."""
        gpas, idx, ok, _ = self._resolve(gpas)
        if not ok.all():
            bad = int(np.argmin(ok))
            raise GuestMemoryFault(int(gpas[bad]), detail=f"gpas[{bad}] is not in any memslot")
        out = np.empty(gpas.shape, dtype=np.uint8)
        for si in np.unique(idx):
            sel = idx == si
            s = self._slots[si]
            out[sel] = s.data[(gpas[sel] - np.uint64(s.gpa)).astype(np.int64)]
        return out

    def write_u8(self, gpas, values) -> None:
        """Vectorised 1-byte writes (later duplicates win). Checks every GPA first: on a fault
        nothing is written."""
        gpas, idx, ok, ro = self._resolve(gpas)
        values = np.broadcast_to(_bytes(values, "write_u8: values"), gpas.shape)
        if not ok.all():
            bad = int(np.argmin(ok))
            raise GuestMemoryFault(int(gpas[bad]), write=True, detail=f"gpas[{bad}] is not in any memslot")
        if ro.size and ro[idx].any():
            bad = int(np.argmax(ro[idx]))
            raise GuestMemoryFault(int(gpas[bad]), write=True, detail=f"gpas[{bad}] is in a read-only memslot")
        for si in np.unique(idx):
            sel = idx == si
            s = self._slots[si]
            s.data[(gpas[sel] - np.uint64(s.gpa)).astype(np.int64)] = values[sel]
        self._mark_dirty((gpas >> np.uint64(PAGE_SHIFT)).astype(np.int64))

    # ------------------------------------------------------------ dirty log
    def dirty_pages(self) -> np.ndarray:
        """Sorted unique 4 KiB guest page numbers (GPA >> 12) written since the last
        :meth:`clear_dirty`."""
        self._apply_dirty()
        parts = [np.flatnonzero(s.dirty).astype(np.int64) + s.page0 for s in self._slots]
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate(parts))

    def clear_dirty(self) -> None:
        """Clear the dirty-page log."""
        self._dirty_pending = []
        for s in self._slots:
            s.dirty[:] = False

    def __repr__(self) -> str:
        parts = ", ".join(
            f"[{s.gpa:#x}+{s.size:#x}{' ro' if s.readonly else ''}]" for s in self._slots
        )
        return f"GuestMemory({parts})"


def _bytes(data, what: str) -> np.ndarray:
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


def _merge(slots: list[MemSlot], writable_only: bool):
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
