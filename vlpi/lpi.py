"""The LPIs of one VM as a struct of arrays.

One row per LPI (KVM: one ``struct vgic_irq`` per INTID per VM). Row order is the LPIs'
*creation order* (KVM before 6.9 kept LPIs on a list in that order, and ``order="insertion"``
walks it); the engine walks INTID order by default, as Linux >= 6.9 does with its xarray.

Resident state is compact: ``intid`` uint32, ``target_vcpu`` in the narrowest signed type that
holds the largest target (int8 up to 126 vCPUs, then int16, then int32), ``pending_latch`` and
``hw`` one byte each: 7 bytes per LPI for VMs of up to 126 vCPUs, 8 up to 32766.

A *packed* table (``LPITable(..., packed=True)``) holds ``pending_latch`` and ``hw`` as bits
instead, a quarter of a byte per LPI for both (5.25 bytes per LPI up to 126 vCPUs), and the
engine reads and writes those bits directly: a save has no flag bytes to read. The price is the
in-place view: in a packed table ``pending_latch`` and ``hw`` are read-only bool *copies*; change
them with their setters or :meth:`LPITable.set_flags`.

``intid`` and ``target_vcpu`` are immutable: they are backed by ``bytes`` objects, so their
``writeable`` flag cannot be turned back on. The engine caches derived orderings keyed on them
(and on the PENDBASERs it is called with); targets change only through
:meth:`LPITable.set_targets`, which replaces the array and invalidates those caches.
In a byte table (the default) ``pending_latch`` and ``hw`` are ordinary writable arrays; restore
updates ``pending_latch`` in place. Any nonzero flag byte means True, everywhere (numpy's own
reading of a ``bool`` byte).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Hashable, Iterator
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from vlpi._typing import BoolArray, U8Array, U32Array, U64Array

__all__ = ["LPITable", "LPI_MIN_INTID", "LPI_INTID_LIMIT"]

LPI_MIN_INTID = 8192
LPI_INTID_LIMIT = 1 << 24
_TARGET_MAX = np.iinfo(np.int32).max

_ScalarT = TypeVar("_ScalarT", bound=np.generic)

# Packed flags: bit i % 64 of word i // 64 is row i; as little-endian bytes, bit i % 8 of byte
# i // 8 (numpy's bitorder="little"), which is how they are packed and unpacked here.


def flag_word_count(n: int) -> int:
    """Words of one packed flag array of ``n`` rows: one bit per row, plus a zero pad word (the
    engine reads 64-bit windows that may start in the last word)."""
    return (n >> 6) + 2


def _pack_into(out: U64Array, flags: npt.NDArray[Any]) -> None:
    """Write ``flags`` (bool or 0/1 bytes, one per row) into the packed words ``out``; pad bits 0."""
    b = np.packbits(flags.view(np.uint8) != 0, bitorder="little")
    raw = np.zeros(out.size * 8, np.uint8)
    raw[: b.size] = b
    out[:] = raw.view("<u8")  # a plain copy on a little-endian host


def _unpack(words: U64Array, n: int) -> U8Array:
    """Rows ``0..n-1`` of packed words as a fresh uint8 0/1 array."""
    return np.unpackbits(words.astype("<u8", copy=False).view(np.uint8), count=n, bitorder="little")


def _target_dtype(max_target: int) -> np.dtype[np.signedinteger[Any]]:
    """Narrowest signed integer type for targets up to ``max_target`` (and -1)."""
    for dt in (np.int8, np.int16):
        if max_target < np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int32)


def _frozen(a: npt.NDArray[_ScalarT]) -> npt.NDArray[_ScalarT]:
    """An immutable copy of ``a``: backed by ``bytes``, so ``flags.writeable`` cannot be set again."""
    return np.frombuffer(np.ascontiguousarray(a).tobytes(), dtype=a.dtype)


def _int_array(x: npt.ArrayLike, name: str) -> npt.NDArray[np.integer[Any]]:
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be an integer array, got {type(x).__name__}")
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    return a


def _rows(index: npt.ArrayLike, n: int, who: str, negative: bool) -> npt.NDArray[np.int64]:
    """Row indices (int64) from integer indices or a bool mask of ``n`` rows; ``negative``: also
    accept -n..-1 (counted from the end). Errors name ``who`` and the first offending entry."""
    idx = np.asarray(index)
    if idx.dtype == np.bool_:
        if idx.shape != (n,):
            raise ValueError(f"{who}: mask has shape {idx.shape}, expected ({n},)")
        idx = np.flatnonzero(idx)
    idx = _int_array(np.atleast_1d(idx), "index").astype(np.int64)
    bad = np.flatnonzero((idx < (-n if negative else 0)) | (idx >= n))
    if bad.size:
        raise IndexError(f"{who}: index[{bad[0]}] = {idx[bad[0]]} out of range for {n} LPIs")
    return idx


def _check_flag_values(a: npt.NDArray[Any], label: str) -> None:
    """Flags are bool, or integers that are all 0 or 1; errors name ``label`` and the first bad entry."""
    if a.dtype == np.bool_:
        return
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{label} must be bool or 0/1 integers, got dtype {a.dtype}")
    bad = np.flatnonzero((a != 0) & (a != 1))
    if bad.size:
        raise ValueError(f"{label}[{bad[0]}] = {a[bad[0]]}: flags must be 0 or 1")


def _flag_array(x: npt.ArrayLike | None, name: str, n: int) -> BoolArray | U8Array:
    """bool/uint8 flags; a contiguous writeable bool or 0/1 uint8 array is used in place.

    Bool arrays whose bytes are not 0/1 are copied with their truth values (nonzero = True)."""
    if x is None:
        return np.zeros(n, dtype=bool)
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be bool or 0/1 integers, got {type(x).__name__}")
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries but intid has {n}")
    _check_flag_values(a, name)
    if a.dtype == np.bool_:
        raw = a.view(np.uint8) if a.flags.c_contiguous else a.astype(np.uint8)
        if n and raw.max() > 1:  # a bool byte that is not 0/1 (e.g. np.frombuffer): normalise
            a = a != 0
    elif a.dtype != np.uint8:
        a = a.astype(bool)
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = np.ascontiguousarray(a).copy()
    return a


class LPITable:
    """The LPIs of one VM.

    Parameters
    ----------
    intid : array-like of int
        Unique INTIDs, ``8192 <= intid < 2**24``.
    target_vcpu : array-like of int
        Target vCPU index per LPI, or -1 for none (an LPI mapped through an unmapped collection).
    pending_latch : array-like of bool, optional
        Software pending state (default all False). A writeable, C-contiguous bool or uint8
        ndarray is used in place (restore then updates *your* array).
    hw : array-like of bool, optional
        True where the LPI is forwarded to the GIC as a VLPI (default all False). Used in place
        like ``pending_latch``.
    packed : bool, optional
        Hold ``pending_latch`` and ``hw`` as bits (2 bits per LPI instead of 2 bytes; saves read
        them without a packing pass). The arrays passed are copied in; ``pending_latch`` and
        ``hw`` then return read-only copies, and restore updates the table's bits. Default False.

    Raises
    ------
    TypeError, ValueError
        Naming the argument and the first offending index; nothing is created.

    Notes
    -----
    What may change in place: the *contents* of ``pending_latch`` and ``hw`` (any nonzero byte
    reads as True), or the arrays themselves through their setters (same length, validated),
    or rows through :meth:`set_flags`. In a packed table only the setters and :meth:`set_flags`
    change flags (they take the table's lock, so an engine call sees all of a change or none).
    What may not: ``intid`` and ``target_vcpu`` are immutable (retarget with
    :meth:`set_targets`); the length of the table is fixed. Do not resize an array you handed
    over with ``ndarray.resize(refcheck=False)`` (numpy's own unchecked escape hatch).

    Thread safety: engine calls and :meth:`set_targets` on one table hold its lock, so they run
    one at a time and never see a half-made change. Writing ``pending_latch``/``hw`` contents from
    another thread while an engine call runs is memory-safe but racy (which value wins is
    unspecified).
    """

    def __init__(
        self,
        intid: npt.ArrayLike,
        target_vcpu: npt.ArrayLike,
        pending_latch: npt.ArrayLike | None = None,
        hw: npt.ArrayLike | None = None,
        *,
        packed: bool = False,
    ) -> None:
        if not isinstance(packed, (bool, np.bool_)):
            raise TypeError(f"packed must be a bool (True or False), got {type(packed).__name__} {packed!r}")
        ia = _int_array(intid, "intid")
        n = ia.shape[0]
        ta = _int_array(target_vcpu, "target_vcpu")
        if ta.shape[0] != n:
            raise ValueError(f"target_vcpu has {ta.shape[0]} entries but intid has {n}")
        if n:
            bad = np.flatnonzero((ia < LPI_MIN_INTID) | (ia >= LPI_INTID_LIMIT))
            if bad.size:
                raise ValueError(
                    f"intid[{bad[0]}] = {ia[bad[0]]} is not an LPI INTID "
                    f"(need {LPI_MIN_INTID} <= intid < 2**24)"
                )
            bad = np.flatnonzero((ta < -1) | (ta > _TARGET_MAX))
            if bad.size:
                raise ValueError(
                    f"target_vcpu[{bad[0]}] = {ta[bad[0]]}: must be -1 (no target) or a vCPU index < 2**31"
                )
        intid_u32 = ia.astype(np.uint32)
        if n:
            _, first = np.unique(intid_u32, return_index=True)
            if first.size != n:
                # the first row (in array order) whose INTID appeared in an earlier row
                is_first = np.zeros(n, dtype=bool)
                is_first[first] = True
                row = int(np.argmin(is_first))
                val = int(intid_u32[row])
                prev = int(np.flatnonzero(intid_u32 == val)[0])
                raise ValueError(f"intid[{row}] = {val} duplicates intid[{prev}]: INTIDs must be unique")
        tmax = int(ta.max()) if n else -1
        tdt = _target_dtype(tmax)
        latch = _flag_array(pending_latch, "pending_latch", n)
        hwa = _flag_array(hw, "hw", n)
        # validated: nothing below can fail
        self._intid = _frozen(intid_u32)
        self._target = _frozen(ta.astype(tdt))
        self._packed = bool(packed)
        self._words: U64Array | None = None  # packed: latch words, then hw words
        if self._packed:
            self._words = np.zeros(2 * flag_word_count(n), np.uint64)
            _pack_into(self._flag_bits(0), latch)
            _pack_into(self._flag_bits(1), hwa)
            latch = hwa = np.zeros(0, bool)  # the bits are the state
        self._pending_latch = latch
        self._hw = hwa
        self._lock = threading.RLock()
        self._max_target = tmax
        self._max_intid = int(self._intid.max()) if n else 0
        self._min_intid = int(self._intid.min()) if n else 0
        self._cache: dict[str | tuple[Hashable, ...], Any] = {}
        self._version = 0  # bumped whenever the targets change

    # ------------------------------------------------------- engine interface
    # Used by the engine (vlpi.pending) only; not for user code.
    @property
    def lock(self) -> threading.RLock:
        """The re-entrant lock that engine calls and ``set_targets`` hold (engine interface)."""
        return self._lock

    @property
    def plan_cache(self) -> dict[str | tuple[Hashable, ...], Any]:
        """The engine's cache of plans built from this table, cleared when the targets change
        (engine interface)."""
        return self._cache

    @property
    def version(self) -> int:
        """Bumped whenever the targets change (read-only)."""
        return self._version

    @property
    def flag_words(self) -> U64Array | None:
        """Packed table: its flag bits, ``pending_latch`` words then ``hw`` words
        (:func:`flag_word_count` each; bit ``i % 64`` of word ``i // 64`` is row ``i``), as a
        read-only view; None for a byte table (engine interface: the engine reads these words, and a
        restore writes the latch words through their address, under :attr:`lock`; the view cannot
        be written or resized, so the bits change only through the table)."""
        if self._words is None:
            return None
        v = self._words.view()
        v.flags.writeable = False
        return v

    @contextlib.contextmanager
    def flag_bytes(self, write_latch: bool = False) -> Iterator[tuple[U8Array, U8Array]]:
        """``(pending_latch, hw)`` as uint8 arrays for kernels that take one byte per row
        (engine interface). A byte table's own arrays; for a packed table, fresh copies, and with
        ``write_latch`` the latch copy is packed back on exit, also when the block raises (a
        kernel-exact partial restore keeps what it did). Holds the lock."""
        with self._lock:
            if self._words is None:
                yield self._pending_latch.view(np.uint8), self._hw.view(np.uint8)
                return
            n = len(self)
            latch = _unpack(self._flag_bits(0), n)
            try:
                yield latch, _unpack(self._flag_bits(1), n)
            finally:
                if write_latch:
                    _pack_into(self._flag_bits(0), latch)

    # ------------------------------------------------------------ accessors
    @property
    def intid(self) -> U32Array:
        """uint32 INTIDs (read-only view)."""
        return self._intid

    @property
    def target_vcpu(self) -> npt.NDArray[np.signedinteger[Any]]:
        """Target vCPU per LPI, -1 = none (int8/int16/int32, the narrowest that fits; read-only:
        see :meth:`set_targets`)."""
        return self._target

    @property
    def packed(self) -> bool:
        """True when ``pending_latch`` and ``hw`` are held as bits (see the class notes)."""
        return self._packed

    def _flag_bits(self, which: int) -> U64Array:
        """A packed table's words of ``pending_latch`` (0) or ``hw`` (1), a writable view."""
        assert self._words is not None, "a byte table has no flag bits"
        nbw = flag_word_count(len(self))
        return self._words[which * nbw : (which + 1) * nbw]

    def _flag_view(self, which: int) -> BoolArray | U8Array:
        if self._words is None:
            return self._pending_latch if which == 0 else self._hw
        with self._lock:  # a whole state, never half of a set_flags
            a = _unpack(self._flag_bits(which), len(self)).view(np.bool_)
        a.flags.writeable = False
        return a

    def _set_flag(self, which: int, value: npt.ArrayLike, name: str) -> None:
        a = _flag_array(value, name, len(self))
        with self._lock:
            if self._words is None:
                if which == 0:
                    self._pending_latch = a
                else:
                    self._hw = a
            else:
                _pack_into(self._flag_bits(which), a)

    @property
    def pending_latch(self) -> BoolArray | U8Array:
        """Software pending state per LPI: the writable bool/uint8 array itself, or in a packed
        table a read-only bool copy (assign the attribute, or use :meth:`set_flags`)."""
        return self._flag_view(0)

    @pending_latch.setter
    def pending_latch(self, value: npt.ArrayLike) -> None:
        self._set_flag(0, value, "pending_latch")

    @property
    def hw(self) -> BoolArray | U8Array:
        """Forwarded to the GIC as a VLPI, per LPI: the writable bool/uint8 array itself, or in a
        packed table a read-only bool copy (as ``pending_latch``)."""
        return self._flag_view(1)

    @hw.setter
    def hw(self, value: npt.ArrayLike) -> None:
        self._set_flag(1, value, "hw")

    def set_flags(
        self,
        index: npt.ArrayLike | slice,
        *,
        pending_latch: npt.ArrayLike | None = None,
        hw: npt.ArrayLike | None = None,
    ) -> None:
        """Set ``pending_latch`` and/or ``hw`` of some rows, in a byte table or a packed one.

        Parameters
        ----------
        index : array-like of int, bool mask, or slice
            The rows.
        pending_latch, hw : array-like of bool, optional
            New values, broadcast to the rows (bool, or 0/1 integers).

        Raises
        ------
        IndexError, TypeError, ValueError
            Naming the argument and the first offending entry; nothing is changed.
        """
        n = len(self)
        idx = np.arange(n)[index] if isinstance(index, slice) else _rows(index, n, "set_flags", negative=True)
        vals: list[tuple[int, npt.NDArray[np.bool_]]] = []
        for which, (name, v) in enumerate((("pending_latch", pending_latch), ("hw", hw))):
            if v is None:
                continue
            if isinstance(v, (str, bytes)):
                raise TypeError(f"set_flags: {name} must be bool or 0/1 integers, got {type(v).__name__}")
            a = np.asarray(v)
            _check_flag_values(np.atleast_1d(a), f"set_flags: {name}")  # indices of the values given
            try:
                a = np.broadcast_to(a, idx.shape)
            except ValueError:
                raise ValueError(f"set_flags: {name} has shape {a.shape}, not broadcastable to {idx.shape}") from None
            vals.append((which, a != 0))
        with self._lock:
            for which, a in vals:
                if self._words is None:
                    (self._pending_latch if which == 0 else self._hw)[index if isinstance(index, slice) else idx] = a
                else:
                    w = self._flag_bits(which)
                    cur = _unpack(w, n)
                    cur[idx] = a
                    _pack_into(w, cur)

    @property
    def max_target(self) -> int:
        """Largest target vCPU index (-1 if none)."""
        return self._max_target

    @property
    def max_intid(self) -> int:
        """Largest INTID (0 for an empty table)."""
        return self._max_intid

    @property
    def min_intid(self) -> int:
        """Smallest INTID (0 for an empty table)."""
        return self._min_intid

    def __len__(self) -> int:
        return int(self._intid.shape[0])

    @property
    def nbytes(self) -> int:
        """Resident bytes of the per-LPI state (caches excluded): ``intid``, ``target_vcpu`` and
        the flags (bytes, or a packed table's bits)."""
        flags = self._words.nbytes if self._words is not None else self._pending_latch.nbytes + self._hw.nbytes
        return self._intid.nbytes + self._target.nbytes + flags

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by cached derived orderings (engine plans)."""
        # a plan may be cached under several keys (one per walk order): count each object once
        unique = {id(v): v for v in self._cache.values()}
        return sum(getattr(v, "nbytes", 0) for v in unique.values())

    # ------------------------------------------------------------- mutation
    def set_targets(self, index: npt.ArrayLike, vcpu: npt.ArrayLike) -> None:
        """Retarget LPIs (MOVI, MOVALL, MAPC remap). ``index``: row indices (or a bool mask);
        ``vcpu``: new target(s), -1 for none. Invalidates cached orderings."""
        n = len(self)
        idx = _rows(index, n, "set_targets", negative=False)
        v = np.broadcast_to(np.asarray(vcpu), idx.shape)
        if v.size and (v.dtype == np.bool_ or not np.issubdtype(v.dtype, np.integer)):
            raise TypeError(f"set_targets: vcpu must be integers, got dtype {v.dtype}")
        bad = np.flatnonzero((v < -1) | (v > _TARGET_MAX))
        if bad.size:
            raise ValueError(f"set_targets: vcpu[{bad[0]}] = {v[bad[0]]}: must be -1 or a vCPU index < 2**31")
        vmax = int(v.max()) if v.size else -1
        t = self._target.astype(np.promote_types(self._target.dtype, _target_dtype(vmax)))
        t[idx] = v
        with self._lock:
            self._target = _frozen(t)
            self._max_target = int(t.max()) if n else -1
            self._cache.clear()
            self._version += 1

    def copy(self) -> LPITable:
        """A deep copy (fresh flag arrays, packed if this table is; no caches)."""
        with self._lock:
            return LPITable(self._intid, self._target, self._flag_view(0).copy(), self._flag_view(1).copy(),
                            packed=self._packed)

    def __repr__(self) -> str:
        n = len(self)
        if n == 0:
            return "LPITable(0 LPIs)"
        tgt = int(np.count_nonzero(self._target >= 0))
        return (
            f"LPITable({n} LPIs, INTID {int(self._intid.min())}..{self._max_intid}, "
            f"{tgt} targeted on vCPUs 0..{self._max_target}, "
            f"{int(np.count_nonzero(self._flag_view(0)))} pending_latch, "
            f"{int(np.count_nonzero(self._flag_view(1)))} hw{', packed' if self._packed else ''})"
        )
